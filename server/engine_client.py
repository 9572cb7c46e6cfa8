"""A frontend's connection to the engine process: send items, await results, notice engine death.

One DEALER socket per frontend process (the engine's ROUTER routes replies back by its identity).
Each request gets an id and a future; the receive loop settles futures as replies arrive, in any
order. `RemoteBatcher` wraps this with the `submit(payloads, key, request_id)` signature of the
in-process batchers, so `ServedClassifier` / `ServedTranslator` run unchanged in a frontend.

Faults, and why they cannot hang a request:
- the socket is `IMMEDIATE`: with no engine connected a send fails at once (503, Retry-After)
  instead of queueing for an engine that may never come;
- a socket monitor reports the engine's disconnection (its process died: the kernel closes the
  ipc socket) and every request waiting on it fails at once with 503 `engine_restarting`;
- when the supervisor's new engine binds again the socket reconnects by itself, the frontend pings
  it, and readiness comes back when it reports its models warm.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
from typing import Any, Callable, Hashable, Optional, Sequence

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from . import wire
from .batching import BatchPolicy
from .errors import ApiError

__all__ = ["EngineClient", "RemoteBatcher", "EngineUnavailable"]

log = logging.getLogger("mmserve.server.frontend")

PING_INTERVAL_S = 0.5
_STATUS_DECODER = msgspec.msgpack.Decoder(wire.Status)


class EngineUnavailable(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(503, "engine_restarting", detail, headers={"Retry-After": "1"})


class EngineClient:
    def __init__(self, endpoint: str, on_status: Callable[[wire.Status], None], on_lost: Callable[[], None]) -> None:
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._sock.connect(endpoint)
        self._on_status, self._on_lost = on_status, on_lost
        self._ids = itertools.count()
        self._pending: dict[int, tuple[asyncio.Future, msgspec.msgpack.Decoder]] = {}
        self.connected = False

    async def run(self) -> None:
        """Receive replies, watch the connection and ping, until cancelled (app shutdown)."""
        await asyncio.gather(self._receive(), self._watch(), self._ping())

    def close(self) -> None:
        self._fail_all("the server is shutting down")
        self._sock.disable_monitor()
        self._monitor.close(0)
        self._sock.close(0)
        self._ctx.term()

    # ------------------------------------------------------------------ requests

    async def submit(self, model: str, payloads: Sequence[Any], key: Hashable, request_id: str,
                     decoder: msgspec.msgpack.Decoder) -> list[Any]:
        message_id = next(self._ids)
        submit = wire.Submit(message_id, model, key, request_id)
        frames = wire.pack_payloads(submit, payloads)
        future = asyncio.get_running_loop().create_future()
        self._pending[message_id] = (future, decoder)
        try:
            await self._sock.send_multipart([wire.ENCODER.encode(submit), *frames], flags=zmq.DONTWAIT, copy=False)
        except zmq.Again:
            self._pending.pop(message_id, None)
            raise EngineUnavailable("the engine process is not connected (restarting); retry shortly") from None
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(message_id, None) is not None:  # the engine still holds it: drop its items
                await self._send_quietly(wire.Cancel(message_id))
            raise

    async def control(self, action: str, name: str, timeout: float) -> wire.Status:
        """Ask the engine to load or unload a model; returns its status after the change."""
        message_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[message_id] = (future, _STATUS_DECODER)
        try:
            await self._sock.send(wire.ENCODER.encode(wire.Control(message_id, action, name)), flags=zmq.DONTWAIT)
        except zmq.Again:
            self._pending.pop(message_id, None)
            raise EngineUnavailable("the engine process is not connected (restarting); retry shortly") from None
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"the engine did not finish '{action} {name}' within {timeout:.0f} s; "
                                           "see GET /v1/models for its state") from None
        finally:
            self._pending.pop(message_id, None)

    async def _send_quietly(self, message: Any) -> None:
        try:
            await self._sock.send(wire.ENCODER.encode(message), flags=zmq.DONTWAIT)
        except zmq.ZMQError:
            pass  # no engine: nothing to cancel or to ask

    # ------------------------------------------------------------------ loops

    async def _receive(self) -> None:
        while True:
            frames = await self._sock.recv_multipart(copy=False)
            message = wire.FROM_ENGINE.decode(frames[0].buffer)
            if isinstance(message, wire.Status):
                self._on_status(message)
                continue
            entry = self._pending.pop(message.id, None)
            if entry is None or entry[0].done():
                continue  # its client left (cancelled) or the engine was declared lost meanwhile
            future, decoder = entry
            if message.error is not None:
                e = message.error
                future.set_exception(ApiError(e.status, e.code, e.detail, headers=dict(e.headers) or None))
            else:
                future.set_result(decoder.decode(frames[1].buffer))

    async def _watch(self) -> None:
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_CONNECTED:
                self.connected = True
                await self._send_quietly(wire.Ping())
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = False
                log.warning("frontend %d: engine disconnected; failing %d waiting requests with 503",
                            os.getpid(), len(self._pending))
                self._fail_all("the engine process stopped while holding this request; retry shortly")
                self._on_lost()

    async def _ping(self) -> None:
        parent = os.getppid()
        while True:
            await self._send_quietly(wire.Ping())
            await asyncio.sleep(PING_INTERVAL_S)
            if os.getppid() != parent:  # the supervisor was killed: do not serve on without it
                log.warning("frontend %d: the supervisor is gone; shutting down", os.getpid())
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def _fail_all(self, detail: str) -> None:
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(EngineUnavailable(detail))


class RemoteBatcher:
    """Stands in for a model's batcher inside a frontend: same `submit`, the work runs in the engine."""

    def __init__(self, client: EngineClient, model: str, result_type: Any, policy: BatchPolicy) -> None:
        self.client = client
        self.name = model
        self.policy = policy
        self._decoder = msgspec.msgpack.Decoder(list[result_type])

    async def submit(self, payloads: Sequence[Any], key: Hashable = None, request_id: str = "") -> list[Any]:
        return await self.client.submit(self.name, payloads, key, request_id, self._decoder)

    def stop(self, drain: bool = True, timeout: Optional[float] = None) -> None:
        """Nothing to stop here: the engine drains its own queues."""
