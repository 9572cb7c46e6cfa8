"""What the running server holds: settings, metrics, the served models and the readiness state.

Models load in the background after the server starts listening, so /healthz answers at once and
/readyz says 503 ("loading") until every model is loaded, warmed up and its batcher running - the
Kubernetes liveness/readiness split.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import anyio

from mmserve.tasks.image_classification import ImageLimits

from .backends import LoadOptions, load_backend
from .batching import BatchPolicy
from .classify import ServedClassifier
from .metrics import Metrics
from .settings import ServerSettings

__all__ = ["ServerState"]

log = logging.getLogger("mmserve.server")

T = TypeVar("T")
Served = Union[ServedClassifier, Any]  # Any: ServedTranslator (imported lazily with the translator's code)


class ServerState:
    def __init__(self, settings: ServerSettings, metrics: Optional[Metrics] = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.classifier: Optional[ServedClassifier] = None
        self.translator: Optional[Any] = None
        self.status = "loading"
        self.error: Optional[str] = None
        self.started = time.time()
        self.loaded_s: Optional[float] = None
        self._pool: Optional[anyio.CapacityLimiter] = None
        self.on_fatal: Optional[Callable[[], None]] = None  # set by the runner: stop serving after a failed load

    async def run_in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking request-side work (image decoding, tokenising) on the bounded worker pool."""
        if self._pool is None:
            self._pool = anyio.CapacityLimiter(self.settings.workers)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._pool)

    # ------------------------------------------------------------------ lifecycle

    def policy(self) -> BatchPolicy:
        s = self.settings
        return BatchPolicy(
            max_batch_size=s.max_batch_size,
            max_queue_delay_s=s.max_queue_delay_ms / 1000.0,
            max_queue_size=s.max_queue_size,
            queue_timeout_s=s.queue_timeout_s,
        )

    def options(self) -> LoadOptions:
        s = self.settings
        return LoadOptions(device=s.device, intra_op_threads=s.intra_op_threads, onnx_cache_dir=s.onnx_cache_dir)

    def set_threads(self) -> None:
        """The one place the server sets torch's intra-op threads (the engine's models and, in split
        serving, each frontend's torch preprocessing too): the model's threads on the torch backend,
        one for the decoding glue next to onnxruntime (exporters.onnx.runtime.thread_policy says why)."""
        from exporters.onnx.runtime import apply_thread_policy

        apply_thread_policy(self.settings.backend, self.settings.intra_op_threads)

    def _load(self) -> None:
        """Blocking: import plugins, load every model, warm it up (runs in a thread)."""
        s = self.settings
        for module in s.plugins:
            importlib.import_module(module)
        self.set_threads()
        if s.classifier is not None:
            backend = load_backend(s.backend, s.classifier, "image-classification", self.options())
            if s.warmup:
                backend.warmup()
            limits = ImageLimits(max_bytes=s.limits.max_image_bytes, max_pixels=s.limits.max_image_pixels)
            self.classifier = ServedClassifier(backend, self.policy(), limits, self.metrics,
                                               s.preprocess_processes, self.run_in_pool)
        if s.translator is not None:
            from .translate import ServedTranslator

            backend = load_backend(s.backend, s.translator, "translation", self.options())
            if s.warmup:
                backend.warmup()
            self.translator = ServedTranslator(backend, s, self.metrics)

    async def start(self) -> None:
        """Load in a worker thread, then start the batchers on this loop; never raises (status says)."""
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(self._load)
            loop = asyncio.get_running_loop()
            for served in self.served():
                served.batcher.start(loop)
        except Exception as exc:  # a model that cannot load: stay alive (liveness) but never ready
            log.exception("loading models failed")
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            if self.on_fatal is not None and self.settings.exit_on_load_error:
                self.on_fatal()
            return
        self.loaded_s = time.perf_counter() - t0
        self.status = "ready"
        self.metrics.ready.set(1)
        log.info("ready: %s (%.1f s)", ", ".join(m.name for m in self.served()), self.loaded_s)

    async def stop(self) -> None:
        """Refuse new items and let the batchers finish what is queued (in-flight requests drain)."""
        if self.status != "failed":  # keep the failure visible (the CLI's exit status depends on it)
            self.status = "stopping"
        self.metrics.ready.set(0)
        grace = self.settings.shutdown_grace_s
        await asyncio.gather(*(asyncio.to_thread(m.batcher.stop, True, grace) for m in self.served()))
        for served in self.served():
            try:
                if hasattr(served, "close"):
                    served.close()
                served.backend.close()
            except Exception:  # pragma: no cover - best effort on the way out
                log.exception("closing %s failed", served.name)

    # ------------------------------------------------------------------ queries

    def served(self) -> list[Served]:
        return [m for m in (self.classifier, self.translator) if m is not None]

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def model_statuses(self) -> dict[str, str]:
        expected = {}
        for kind, path in (("classifier", self.settings.classifier), ("translator", self.settings.translator)):
            if path is not None:
                served = getattr(self, kind)
                expected[served.name if served else Path(path).name] = self.status if served else (
                    "failed" if self.status == "failed" else "loading")
        return expected

    def render_metrics(self) -> bytes:
        """The Prometheus text /metrics returns (queue depths refreshed first)."""
        for served in self.served():
            self.metrics.queue_depth.labels(served.name).set(served.batcher.depth)
        return self.metrics.render()

    def model_info(self) -> list[dict[str, Any]]:
        out = []
        for served in self.served():
            info = served.backend.info
            policy = served.batcher.policy
            entry = {
                "name": served.name,
                "task": served.task,
                "backend": info.backend,
                "device": info.device,
                "source": str(info.source),
                "sha256": info.weights_sha256,
                "parameters": info.parameters,
                "max_batch_size": policy.max_batch_size,
                "max_queue_delay_ms": policy.max_queue_delay_s * 1000.0,
                "max_queue_size": policy.max_queue_size,
                "labels": None,
                "extra": dict(info.extra),
            }
            extra = served.model_info()
            entry["labels"] = extra.pop("labels", None)
            entry["extra"].update(extra.pop("extra", {}))
            out.append(entry)
        return out
