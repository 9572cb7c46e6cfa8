"""What the running server holds: settings, metrics, the models by name and the readiness state.

Models load in the background after the server starts listening, so /healthz answers at once and
/readyz says 503 ("loading") until every model has been tried (loaded, warmed up and its batcher
running, or failed) - the Kubernetes liveness/readiness split.

Every model has a slot (`ModelSlot`) with its own state, as in Triton's model repository:
loading -> ready | failed; ready -> unloading -> unloaded; unloaded | failed -> loading (POST load).
A request names its model or gets the task's default (`resolve`); only a ready slot takes work, so
an unloading model refuses new requests while its batcher finishes the queued ones. A model named
on the command line that fails to load fails the server (`exit_on_load_error`, like Triton's
--exit-on-error); one found in --model-repository is reported and the others serve.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

import anyio

from mmserve.tasks.image_classification import ImageLimits

from .backends import LoadOptions, load_backend
from .batching import BatchPolicy
from .classify import ServedClassifier
from .errors import ApiError
from .repository import ModelSpec, read_model_spec, scan_repository
from .metrics import Metrics
from .settings import ServerSettings

__all__ = ["ServerState", "ModelSlot", "ENDPOINT_OF_TASK"]

log = logging.getLogger("mmserve.server")

T = TypeVar("T")
Served = Union[ServedClassifier, Any]  # Any: ServedTranslator (imported lazily with the translator's code)


ENDPOINT_OF_TASK = {"image-classification": "/classify", "translation": "/translate"}


@dataclass
class ModelSlot:
    """One model the server knows: where it comes from, its state, and (when ready) the served model."""

    spec: ModelSpec
    state: str = "loading"  # loading | ready | failed | unloading | unloaded
    reason: Optional[str] = None
    served: Optional[Served] = None
    info: Optional[dict[str, Any]] = None  # the /v1/models entry of the loaded model

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self) -> Optional[str]:
        return self.spec.task


class ServerState:
    def __init__(self, settings: ServerSettings, metrics: Optional[Metrics] = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.slots: dict[str, ModelSlot] = {}
        self.status = "loading"
        self.error: Optional[str] = None
        self.started = time.time()
        self.loaded_s: Optional[float] = None
        self._pool: Optional[anyio.CapacityLimiter] = None
        self._runtime_ready = False
        self.on_fatal: Optional[Callable[[], None]] = None  # set by the runner: stop serving after a failed load

    async def run_in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking request-side work (image decoding, tokenising) on the bounded worker pool."""
        if self._pool is None:
            self._pool = anyio.CapacityLimiter(self.settings.workers)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._pool)

    # ------------------------------------------------------------------ what to serve

    def specs(self) -> list[ModelSpec]:
        """The models asked for, in order: --classifier, --translator, --model..., the repository."""
        s = self.settings
        paths = [p for p in (s.classifier, s.translator) if p is not None] + list(s.models)
        specs = [read_model_spec(Path(p)) for p in paths]
        if s.model_repository is not None:
            specs += scan_repository(s.model_repository)
        return specs

    def _add_slot(self, spec: ModelSpec) -> ModelSlot:
        slot = ModelSlot(spec)
        if spec.name in self.slots:  # two directories claim one name: the first keeps it
            other = self.slots[spec.name].spec.path
            spec.name = f"{spec.path.name}@{spec.path.parent.name}"
            slot.state, slot.reason = "failed", f"{spec.path}: model name already served from {other}"
        elif spec.error is not None:
            slot.state, slot.reason = "failed", spec.error
        self.slots.setdefault(spec.name, slot)
        return slot

    # ------------------------------------------------------------------ lifecycle

    def policy(self, spec: Optional[ModelSpec] = None) -> BatchPolicy:
        s = self.settings.model_copy(update=self._overrides(spec))
        return BatchPolicy(
            max_batch_size=s.max_batch_size,
            max_queue_delay_s=s.max_queue_delay_ms / 1000.0,
            max_queue_size=s.max_queue_size,
            queue_timeout_s=s.queue_timeout_s,
        )

    @staticmethod
    def _overrides(spec: Optional[ModelSpec]) -> dict[str, Any]:
        return {} if spec is None else spec.serving.model_dump(exclude_none=True)

    def options(self, spec: Optional[ModelSpec] = None) -> LoadOptions:
        """How to load a model. A translator's sessions get the intra-op threads of ONE decode lane
        (`ServerSettings.translator_threads`): with 2 threads in 2 lanes each session runs on 1, else
        2 lanes x 2 threads would oversubscribe 2 cores. A classifier (one worker thread) gets them all."""
        s = self.settings.model_copy(update=self._overrides(spec))
        threads = s.intra_op_threads
        if spec is not None and spec.task == "translation":
            threads = s.translator_threads().intra_op_threads
        return LoadOptions(device=s.device, intra_op_threads=threads, onnx_cache_dir=s.onnx_cache_dir)

    def set_threads(self) -> None:
        """The one place the server sets torch's intra-op threads (the engine's models and, in split
        serving, each frontend's torch preprocessing too): the model's threads on the torch backend,
        one for the decoding glue next to onnxruntime (exporters.onnx.runtime.thread_policy says why)."""
        from exporters.onnx.runtime import apply_thread_policy

        apply_thread_policy(self.settings.backend, self.settings.intra_op_threads)

    def _prepare_runtime(self) -> None:
        """Blocking, once: import plugins and set torch's threads (before the first model loads)."""
        if self._runtime_ready:
            return
        s = self.settings
        for module in s.plugins:
            importlib.import_module(module)
        self.set_threads()
        self._runtime_ready = True

    def _load_model(self, spec: ModelSpec) -> Served:
        """Blocking: load one model with its own settings and warm it up (runs in a thread)."""
        self._prepare_runtime()
        s = self.settings.model_copy(update=self._overrides(spec))
        backend = load_backend(s.backend, spec.path, spec.task, self.options(spec))
        try:
            if s.warmup:
                backend.warmup()
            if spec.task == "image-classification":
                limits = ImageLimits(max_bytes=s.limits.max_image_bytes, max_pixels=s.limits.max_image_pixels)
                return ServedClassifier(backend, self.policy(spec), limits, self.metrics,
                                        s.preprocess_processes, self.run_in_pool)
            from .translate import ServedTranslator

            return ServedTranslator(backend, s, self.metrics)
        except BaseException:
            backend.close()
            raise

    async def _activate(self, slot: ModelSlot) -> None:
        """Load the slot's model and start its batcher; on failure the slot says why (never raises)."""
        slot.state, slot.reason = "loading", None
        try:
            served = await asyncio.to_thread(self._load_model, slot.spec)
            served.batcher.start(asyncio.get_running_loop())
        except Exception as exc:
            log.exception("loading model %r from %s failed", slot.name, slot.spec.path)
            slot.state, slot.reason = "failed", f"{type(exc).__name__}: {exc}"
            return
        slot.served, slot.info = served, self._describe(served)
        slot.state = "ready"

    async def start(self) -> None:
        """Load every model (one at a time: they share the cores), then say ready; never raises."""
        t0 = time.perf_counter()
        try:
            for spec in self.specs():
                self._add_slot(spec)
            for slot in list(self.slots.values()):
                if slot.state == "loading":
                    await self._activate(slot)
        except Exception as exc:  # pragma: no cover - a bug in discovery: stay alive, never ready
            log.exception("loading models failed")
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            return
        fatal = [s for s in self.slots.values() if s.state == "failed" and not s.spec.from_repository]
        defaults = {"image-classification": self.settings.default_classifier,
                    "translation": self.settings.default_translator}
        wrong_default = [f"default {task} model {name!r} is not served (models: {self.names_for(task)})"
                         for task, name in defaults.items()
                         if name is not None and (name not in self.slots or self.slots[name].task != task)]
        if fatal or wrong_default or not any(s.state == "ready" for s in self.slots.values()):
            failed = fatal or [s for s in self.slots.values() if s.state == "failed"]
            self.status = "failed"
            self.error = "; ".join(wrong_default + [f"{s.name}: {s.reason}" for s in failed]) or "no model to serve"
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
            self._close(served)

    @staticmethod
    def _close(served: Served) -> None:
        try:
            if hasattr(served, "close"):
                served.close()
            served.backend.close()
        except Exception:  # pragma: no cover - best effort on the way out
            log.exception("closing %s failed", served.name)

    # ------------------------------------------------------------------ runtime load / unload

    def _known_slot(self, name: str) -> ModelSlot:
        slot = self.slots.get(name)
        if slot is None and self.settings.model_repository is not None:
            # Triton's explicit model control: a directory added to the repository since start-up.
            for spec in scan_repository(self.settings.model_repository):
                if spec.name == name and name not in self.slots:
                    slot = self._add_slot(spec)
                    slot.state = "unloaded" if spec.error is None else slot.state
        if slot is None:
            raise ApiError(404, "unknown_model", f"no model named {name!r}; known models: {sorted(self.slots)}")
        return slot

    async def load(self, name: str) -> dict[str, Any]:
        """POST /v1/models/{name}/load: (re)read the model's directory and load it."""
        self._check_running()
        slot = self._known_slot(name)
        if slot.state == "ready":
            return self.describe_slot(slot)
        if slot.state in ("loading", "unloading"):
            raise ApiError(409, "model_busy", f"model {name!r} is {slot.state}; try again when it has finished")
        spec = read_model_spec(slot.spec.path, slot.spec.from_repository)
        if spec.error is not None or spec.name != name:
            slot.state = "failed"
            slot.reason = spec.error or f"{spec.path} now holds model {spec.name!r}, not {name!r}"
        else:
            slot.spec = spec
            await self._activate(slot)
        if slot.state != "ready":
            raise ApiError(422, "load_failed", f"model {name!r} failed to load: {slot.reason}")
        log.info("model %r loaded", name)
        return self.describe_slot(slot)

    async def unload(self, name: str) -> dict[str, Any]:
        """POST /v1/models/{name}/unload: refuse new requests, finish the queued ones, free the model."""
        self._check_running()
        slot = self._known_slot(name)
        if slot.state in ("unloaded", "failed"):
            return self.describe_slot(slot)
        if slot.state != "ready":
            raise ApiError(409, "model_busy", f"model {name!r} is {slot.state}; try again when it has finished")
        served = slot.served
        slot.state, slot.reason = "unloading", None
        await asyncio.to_thread(served.batcher.stop, True, self.settings.shutdown_grace_s)
        self._close(served)
        slot.served, slot.info, slot.state = None, None, "unloaded"
        log.info("model %r unloaded", name)
        return self.describe_slot(slot)

    def _check_running(self) -> None:
        if self.status == "stopping":
            raise ApiError(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "1"})
        if self.status == "loading":
            raise ApiError(503, "not_ready", "models are still loading; poll /readyz", headers={"Retry-After": "1"})

    # ------------------------------------------------------------------ request routing

    def default_model(self, task: str) -> Optional[str]:
        """The model a request for `task` gets when it names none."""
        s = self.settings
        configured = s.default_classifier if task == "image-classification" else s.default_translator
        if configured is not None:
            return configured
        return next((slot.name for slot in self.slots.values() if slot.task == task), None)

    def names_for(self, task: str) -> list[str]:
        return [slot.name for slot in self.slots.values() if slot.task == task]

    def resolve(self, task: Optional[str], name: Optional[str]) -> Served:
        """The ready model that serves this request, or the 4xx/503 that says why there is none."""
        if self.status == "stopping":
            raise ApiError(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "1"})
        if self.status == "failed" and name is None:
            raise ApiError(503, "not_ready", "the models failed to load; see /readyz and the server log")
        if name is None:
            name = self.default_model(task) if task else None
            if name is None:
                if self.status == "loading" and not self.slots:
                    raise ApiError(503, "not_ready", "models are still loading; poll /readyz",
                                   headers={"Retry-After": "1"})
                raise ApiError(404, "no_model", f"this server does not serve a {task} model")
        slot = self.slots.get(name)
        available = f"models for {ENDPOINT_OF_TASK.get(task, 'this endpoint')}: {self.names_for(task)}" if task \
            else f"models: {sorted(self.slots)}"
        if slot is None:
            if self.status == "loading" and not self.slots:
                raise ApiError(503, "not_ready", "models are still loading; poll /readyz", headers={"Retry-After": "1"})
            raise ApiError(404, "unknown_model", f"no model named {name!r}; {available}")
        if task is not None and slot.task is not None and slot.task != task:
            raise ApiError(422, "wrong_task", f"model {name!r} is a {slot.task} model; {available}")
        if slot.state == "ready" and slot.served is not None:
            return slot.served
        if slot.state == "loading":
            raise ApiError(503, "not_ready", f"model {name!r} is still loading; poll /readyz",
                           headers={"Retry-After": "1"})
        if slot.state == "failed":
            raise ApiError(503, "not_ready", f"model {name!r} failed to load: {slot.reason}")
        raise ApiError(503, "model_unavailable", f"model {name!r} is {slot.state}; POST /v1/models/{name}/load "
                                                 "to serve it again")

    # ------------------------------------------------------------------ queries

    def served(self) -> list[Served]:
        return [slot.served for slot in self.slots.values() if slot.served is not None]

    @property
    def classifier(self) -> Optional[ServedClassifier]:
        """The default classifier when it is ready (the playground's and OpenAPI's example model)."""
        slot = self.slots.get(self.default_model("image-classification") or "")
        return slot.served if slot is not None and slot.state == "ready" else None

    @property
    def translator(self) -> Optional[Any]:
        slot = self.slots.get(self.default_model("translation") or "")
        return slot.served if slot is not None and slot.state == "ready" else None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def model_statuses(self) -> dict[str, str]:
        if not self.slots:  # before discovery: the models the settings name
            s = self.settings
            return {Path(p).name: self.status for p in (s.classifier, s.translator, *s.models) if p is not None}
        return {slot.name: slot.state for slot in self.slots.values()}

    def render_metrics(self) -> bytes:
        """The Prometheus text /metrics returns (queue depths refreshed first)."""
        for served in self.served():
            self.metrics.queue_depth.labels(served.name).set(served.batcher.depth)
        return self.metrics.render()

    def describe_slot(self, slot: ModelSlot) -> dict[str, Any]:
        """A /v1/models entry: the loaded model's description, or what is known of an unloaded one."""
        entry: dict[str, Any] = dict(slot.info) if slot.info is not None else {
            "name": slot.name, "task": slot.task, "source": str(slot.spec.path)}
        entry["state"] = slot.state
        entry["reason"] = slot.reason
        entry["default"] = slot.task is not None and self.default_model(slot.task) == slot.name
        return entry

    def model_info(self) -> list[dict[str, Any]]:
        return [self.describe_slot(slot) for slot in self.slots.values()]

    @staticmethod
    def _describe(served: Served) -> dict[str, Any]:
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
        return entry
