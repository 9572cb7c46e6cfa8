"""An HTTP frontend process of split serving: the same FastAPI app (`create_app`), with a state whose
models live in the engine process.

The frontend does everything that is per request and parallel: HTTP, validation, body parsing,
image decoding and preprocessing, tokenisation, response encoding. What it needs of a model for that
is light (labels, preprocessing config, tokenizer), read from the directory the engine loaded it from,
which the engine reports with its status. The engine's status also drives readiness (/readyz is 200
only while the engine says it is ready) and every model's state; loading and unloading a model is
asked of the engine, whose answer (its new status) this frontend routes by at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI

from mmserve.tasks.image_classification import ImageLimits

from . import wire
from .app import create_app
from .backends import BackendInfo
from .classify import ServedClassifier
from .engine_client import EngineClient, RemoteBatcher
from .settings import ServerSettings
from .errors import ApiError
from .repository import ModelSpec
from .state import ModelSlot, ServerState

__all__ = ["RemoteState", "RemoteModel", "create_frontend_app"]

log = logging.getLogger("mmserve.server.frontend")


@dataclass
class RemoteModel:
    """What a frontend knows of a model the engine runs: the `backend` attributes ServedClassifier /
    ServedTranslator read outside the model run."""

    name: str
    config: Any
    info: BackendInfo
    tokenizer: Any = None


class RemoteState(ServerState):
    """ServerState for a frontend: models come and go with the engine's status messages."""

    def __init__(self, settings: ServerSettings, endpoint: str) -> None:
        super().__init__(settings)
        self.client = EngineClient(endpoint, self._on_status, self._on_lost)
        self._entries: dict[str, wire.ModelEntry] = {}

    async def start(self) -> None:
        """Runs for the app's lifetime (create_app's lifespan cancels it at shutdown)."""
        self.set_threads()  # image preprocessing and tokenising use torch here too
        await self.client.run()

    async def stop(self) -> None:
        """uvicorn has already waited for in-flight requests; close the connection to the engine."""
        if self.status != "failed":
            self.status = "stopping"
        self.client.close()
        for served in self.served():
            if hasattr(served, "close"):
                served.close()

    # ------------------------------------------------------------------ engine status

    def _on_status(self, status: wire.Status) -> None:
        if self.status == "stopping":
            return
        try:
            self._adopt(status.models)
        except Exception as exc:  # a model dir the frontend cannot read: never ready, say why
            log.exception("frontend: reading the engine's models failed")
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            return
        if self.status != status.status:
            log.info("frontend: engine is %s", status.status)
        self.status, self.error = status.status, status.error

    def _on_lost(self) -> None:
        if self.status != "stopping":
            self.status, self.error = "loading", "the engine process is restarting"

    def _adopt(self, entries: list[wire.ModelEntry]) -> None:
        """Mirror the engine's slots; build the request-side half of a ready model (again only if it changed)."""
        slots: dict[str, ModelSlot] = {}
        for entry in entries:
            known, old = self._entries.get(entry.name), self.slots.get(entry.name)
            same = known is not None and old is not None and (known.source, known.state, known.info.get("sha256")) \
                == (entry.source, entry.state, entry.info.get("sha256"))
            if same:
                old.info = entry.info
                slots[entry.name] = old
                continue
            served = None
            if entry.state == "ready":
                served = self._classifier(entry) if entry.task == "image-classification" else self._translator(entry)
            spec = ModelSpec(entry.name, Path(entry.source), entry.task or None)
            slots[entry.name] = ModelSlot(spec, entry.state, entry.reason, served, entry.info)
        for name, old in self.slots.items():  # replaced or gone: free its preprocessing workers
            if old.served is not None and slots.get(name) is not old and hasattr(old.served, "close"):
                old.served.close()
        self.slots = slots
        self._entries = {entry.name: entry for entry in entries}

    async def load(self, name: str) -> dict[str, Any]:
        return await self._control("load", name)

    async def unload(self, name: str) -> dict[str, Any]:
        return await self._control("unload", name)

    async def _control(self, action: str, name: str) -> dict[str, Any]:
        self._check_running()
        status = await self.client.control(action, name, self.settings.request_timeout_s)
        self._on_status(status)
        slot = self.slots.get(name)
        if slot is None:  # pragma: no cover - the engine answered for a model it does not report
            raise ApiError(404, "unknown_model", f"no model named {name!r}")
        return self.describe_slot(slot)

    def _batcher(self, entry: wire.ModelEntry, result_type: Any) -> Any:
        """Where a model's items go: the engine process here (the Ray ingress overrides this)."""
        return RemoteBatcher(self.client, entry.name, result_type, self._policy(entry))

    def _remote_model(self, entry: wire.ModelEntry, tokenizer: Any = None) -> RemoteModel:
        from mmserve.checkpoints import read_config

        info = BackendInfo(backend=entry.info["backend"], device=entry.info["device"], source=Path(entry.source),
                           weights_sha256=entry.info["sha256"], parameters=entry.info.get("parameters"))
        return RemoteModel(entry.name, read_config(entry.source), info, tokenizer)

    def _classifier(self, entry: wire.ModelEntry) -> ServedClassifier:
        s = self.settings
        limits = ImageLimits(max_bytes=s.limits.max_image_bytes, max_pixels=s.limits.max_image_pixels)
        batcher = self._batcher(entry, wire.Row)
        return ServedClassifier(self._remote_model(entry), self._policy(entry), limits, self.metrics,
                                s.preprocess_processes, self.run_in_pool, batcher=batcher)

    def _translator(self, entry: wire.ModelEntry) -> Any:
        from mmserve.tasks.translation import load_tokenizer

        from .translate import ServedTranslator

        batcher = self._batcher(entry, tuple[list[int], float])
        model = self._remote_model(entry, load_tokenizer(entry.source))
        return ServedTranslator(model, self.settings, self.metrics, batcher=batcher)

    # ------------------------------------------------------------------ queries

    def _policy(self, entry: wire.ModelEntry) -> Any:
        """The engine's batching policy of this model (it applied the model's serving.json)."""
        from .batching import BatchPolicy

        info = entry.info
        return BatchPolicy(max_batch_size=info["max_batch_size"], max_queue_delay_s=info["max_queue_delay_ms"] / 1000,
                           max_queue_size=info["max_queue_size"], queue_timeout_s=self.settings.queue_timeout_s)

    def describe_slot(self, slot: ModelSlot) -> dict[str, Any]:
        return dict(slot.info) if slot.info is not None else super().describe_slot(slot)

    def render_metrics(self) -> bytes:
        return self.metrics.render()  # the engine keeps the queue-depth gauges itself


def create_frontend_app(settings: ServerSettings, endpoint: str, log_format: Optional[str] = None) -> FastAPI:
    """The app factory uvicorn calls in each frontend process (see server/supervisor.py)."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format=log_format or "%(asctime)s %(levelname)s %(name)s [frontend %(process)d]: %(message)s")
    return create_app(settings, state=RemoteState(settings, endpoint))
