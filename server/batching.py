"""Dynamic batching (Triton's `dynamic_batching`): requests from many clients become *items* in one
bounded queue per model; a worker thread per model takes up to `max_batch_size` items - waiting at most
`max_queue_delay` after the oldest one arrived - runs them as one batch, and routes each result back to
the request that owns it.

- Model work runs on the worker thread, never on the event loop; one thread per model serialises the
  backend, so backends need not be thread-safe. (The translator's continuous batcher may run several
  worker threads, "lanes", over one stepper: see continuous.py.)
- One request's items may span several batches; `submit` gathers them back in order.
- Only items with the same `key` share a batch (e.g. /classify with and without `explain` run
  different graphs). Items of other keys keep their place in the queue.
- The queue is bounded in items: a request that does not fit is refused at once (`Overloaded`, 503
  with Retry-After) instead of queueing unboundedly and timing out later.
- A cancelled request (client gone, request timeout) cancels its futures and leaves the queue; the
  worker never spends model time on it.
- An item still queued after `queue_timeout` fails with `QueueTimeout` (503) when the worker reaches it.
- A batch whose run raises fails exactly the items in that batch (`BackendFault`); the error is logged
  once with the request ids it hit. Other batches, queued or later, are unaffected.
- `stop(drain=True)` refuses new work, lets the worker finish everything queued, then joins it.

`BatchQueue` holds the parts shared with the translator's continuous batcher (continuous.py): the
bounded queue, submit/cancel, delivery to the event loop, shutdown; subclasses write `_worker(index)`,
run on `_worker_count()` threads (1 unless a subclass says otherwise).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Sequence

from .errors import BackendFault, Overloaded, QueueTimeout, ShuttingDown
from .metrics import Metrics

__all__ = ["BatchQueue", "DynamicBatcher", "BatchPolicy", "Item"]

log = logging.getLogger("mmserve.server.batching")

RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 1024
    queue_timeout_s: float = 30.0


@dataclass(eq=False)
class Item:
    """One unit of work (an image, a text) owned by one request."""

    payload: Any
    key: Hashable
    future: asyncio.Future
    request_id: str
    enqueued: float = field(default_factory=time.monotonic)


class BatchQueue:
    """A model's bounded item queue, the worker thread that drains it, and result delivery."""

    def __init__(self, name: str, policy: BatchPolicy, metrics: Optional[Metrics] = None) -> None:
        self.name = name
        self.policy = policy
        self._m = (metrics or Metrics()).for_model(name)  # a private registry when none is given (tests)
        self._queue: collections.deque[Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stats_lock = threading.Lock()  # several worker threads may record a run at once
        self._avg_batch_s = 0.01  # EWMA of one model run's wall time, for Retry-After
        self.batches_run = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        count = self._worker_count()
        self._threads = [
            threading.Thread(target=self._run_worker, args=(i,), daemon=True,
                             name=f"batcher-{self.name}" + (f"-{i}" if count > 1 else ""))
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, drain: bool = True, timeout: Optional[float] = None) -> None:
        """Refuse new items; with `drain` run what is queued first, else fail it with ShuttingDown.
        Joins every worker thread, all within `timeout` seconds together."""
        with self._cond:
            self._stopping = True
            if not drain:
                dropped = list(self._queue)
                self._queue.clear()
                self._on_removed(dropped)
                self._fail_items(dropped, ShuttingDown(self.name), "shutdown")
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        """A worker thread is alive (False once stop() has joined them all)."""
        return any(thread.is_alive() for thread in self._threads)

    # ------------------------------------------------------------------ event-loop side

    def retry_after(self, extra_items: int = 0) -> int:
        """Seconds until the queue (plus `extra_items`) would likely have drained; at least 1."""
        batches = (len(self._queue) + extra_items) / self.policy.max_batch_size
        return max(1, math.ceil(batches * self._avg_batch_s))

    async def submit(self, payloads: Sequence[Any], key: Hashable = None, request_id: str = "") -> list[Any]:
        """Queue one request's items and wait for all their results (in order). Cancelling the awaiting
        task removes the request's items that have not started yet."""
        if self._stopping:
            raise ShuttingDown(self.name)
        loop = asyncio.get_running_loop()
        items = [Item(p, key, loop.create_future(), request_id) for p in payloads]
        with self._cond:
            if len(self._queue) + len(items) > self.policy.max_queue_size:
                self._count(len(items), reason="queue_full")
                raise Overloaded(self.name, self.retry_after(len(items)))
            self._queue.extend(items)
            self._on_added(items)
            self._set_depth()
            self._cond.notify()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        except BaseException:
            self._cancel(items)
            for item in items:  # mark sibling failures as seen (no "exception never retrieved" noise)
                if item.future.done() and not item.future.cancelled():
                    item.future.exception()
            raise

    def _cancel(self, items: list[Item]) -> None:
        removed = []
        with self._cond:
            for item in items:
                if not item.future.done():
                    item.future.cancel()  # (gather has usually cancelled them already)
                if item.future.cancelled():
                    try:
                        self._queue.remove(item)
                        removed.append(item)
                    except ValueError:
                        pass  # already taken by the worker: its result is simply dropped
            self._on_removed(removed)
            self._set_depth()
            self._cond.notify()
        if removed:
            self._count(len(removed), reason="cancelled")

    # ------------------------------------------------------------------ worker side

    def _run_worker(self, index: int) -> None:
        try:
            self._worker(index)
        except BaseException:  # pragma: no cover - a bug in the loop itself: fail loudly, fail everything
            log.exception("model %r: batching worker crashed", self.name)
            with self._cond:
                self._stopping = True
                dropped = list(self._queue)
                self._queue.clear()
            self._fail_items(dropped, BackendFault(self.name), "backend_error")
            raise

    def _worker_count(self) -> int:
        """Worker threads to start, each running `_worker(index)` for index in range(count)."""
        return 1

    def _worker(self, index: int) -> None:
        raise NotImplementedError

    def _on_added(self, items: list[Item]) -> None:
        """Hook for bookkeeping (called under the lock)."""

    def _on_removed(self, items: list[Item]) -> None:
        """Hook for bookkeeping (called under the lock)."""

    def _expire(self, items: list[Item], now: float) -> list[Item]:
        """Fail items that waited longer than queue_timeout; return the others."""
        live, expired = [], []
        for item in items:
            (expired if now - item.enqueued > self.policy.queue_timeout_s else live).append(item)
        if expired:
            self._fail_items(expired, QueueTimeout(self.name, self.policy.queue_timeout_s), "queue_timeout")
        return live

    def _observe_wait(self, items: list[Item], now: float) -> None:
        for item in items:
            self._m.queue_wait.observe(now - item.enqueued)

    def _observe_run(self, size: int, elapsed: float) -> None:
        with self._stats_lock:
            self._avg_batch_s = 0.8 * self._avg_batch_s + 0.2 * elapsed
            self.batches_run += 1
        self._m.batch_size.observe(size)
        self._m.batch_duration.observe(elapsed)

    def _backend_failed(self, items: list[Item]) -> None:
        ids = sorted({item.request_id for item in items})
        log.exception("model %r: batch of %d items failed (request ids: %s)", self.name, len(items), ids)
        self._m.backend_errors.inc()
        self._fail_items(items, BackendFault(self.name), "backend_error")

    def _fail_items(self, items: list[Item], error: Exception, reason: str) -> None:
        if not items:
            return
        self._count(len(items), reason=reason)
        self._deliver([(item.future, None, error) for item in items])

    def _succeed(self, pairs: list[tuple[Item, Any]]) -> None:
        if pairs:
            self._m.items_ok.inc(len(pairs))
        self._deliver([(item.future, result, None) for item, result in pairs])

    def _deliver(self, outcomes: list[tuple[asyncio.Future, Any, Optional[Exception]]]) -> None:
        """Hand results to the event loop in one callback per batch (cheap for big batches)."""

        def settle() -> None:
            for future, result, error in outcomes:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # loop closed during shutdown: nobody is waiting any more
            pass

    def _set_depth(self) -> None:
        self._m.queue_depth.set(len(self._queue))

    def _count(self, n: int, reason: str) -> None:
        self._m.rejected(reason, n)


class DynamicBatcher(BatchQueue):
    """Stateless models (the classifier): `run_batch(key, payloads) -> results` (same length, same
    order) is called on the worker thread only."""

    def __init__(self, name: str, run_batch: RunBatch, policy: BatchPolicy, metrics: Optional[Metrics] = None):
        super().__init__(name, policy, metrics)
        self._run_batch = run_batch
        self._per_key: collections.Counter = collections.Counter()  # queued items per key

    def _on_added(self, items: list[Item]) -> None:
        for item in items:
            self._per_key[item.key] += 1

    def _on_removed(self, items: list[Item]) -> None:
        for item in items:
            self._per_key[item.key] -= 1

    def _worker(self, index: int) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._execute(batch)

    def _next_batch(self) -> Optional[list[Item]]:
        """Block until a batch is due; None when stopping and the queue is empty."""
        p = self.policy
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            head = self._queue[0]
            deadline = head.enqueued + p.max_queue_delay_s
            while not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._per_key[head.key] >= p.max_batch_size:
                    break
                self._cond.wait(remaining)
                if not self._queue or self._queue[0] is not head:  # head cancelled: start over
                    return []
            return self._take(head.key)

    def _take(self, key: Hashable) -> list[Item]:
        """Pop up to max_batch_size live items of `key`, keeping the others in order (under the lock)."""
        batch: list[Item] = []
        keep: collections.deque[Item] = collections.deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.cancelled():
                self._per_key[item.key] -= 1
                continue
            if item.key == key and len(batch) < self.policy.max_batch_size:
                batch.append(item)
                self._per_key[key] -= 1
            else:
                keep.append(item)
                if len(batch) >= self.policy.max_batch_size:
                    keep.extend(self._queue)
                    self._queue.clear()
        self._queue = keep
        self._set_depth()
        now = time.monotonic()
        batch = self._expire(batch, now)
        self._observe_wait(batch, now)
        return batch

    def _execute(self, batch: list[Item]) -> None:
        start = time.perf_counter()
        try:
            results = self._run_batch(batch[0].key, [item.payload for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except Exception:
            self._backend_failed(batch)
            return
        self._observe_run(len(batch), time.perf_counter() - start)
        self._succeed(list(zip(batch, results)))
