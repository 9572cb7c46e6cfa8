"""An HTTP frontend process of split serving: the same FastAPI app (`create_app`), with a state whose
models live in the engine process.

The frontend does everything that is per request and parallel: HTTP, validation, body parsing,
image decoding and preprocessing, tokenisation, response encoding. What it needs of a model for that
is light (labels, preprocessing config, tokenizer), read from the directory the engine loaded it from,
which the engine reports with its status. The engine's status also drives readiness: /readyz is 200
only while the engine says every model is loaded and warm.
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
from .state import ServerState

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
        self._info: list[dict[str, Any]] = []

    async def start(self) -> None:
        """Runs for the app's lifetime (create_app's lifespan cancels it at shutdown)."""
        await self.client.run()

    async def stop(self) -> None:
        """uvicorn has already waited for in-flight requests; close the connection to the engine."""
        if self.status != "failed":
            self.status = "stopping"
        self.client.close()
        if self.classifier is not None:
            self.classifier.close()

    # ------------------------------------------------------------------ engine status

    def _on_status(self, status: wire.Status) -> None:
        if self.status == "stopping":
            return
        if status.status == "ready":
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
        """Build the request-side half of every model the engine serves (again only if it changed)."""
        for entry in entries:
            known = self._entries.get(entry.name)
            if known is not None and (known.source, known.info.get("sha256")) == (entry.source, entry.info.get("sha256")):
                continue
            self._entries[entry.name] = entry
            if entry.task == "image-classification":
                self.classifier = self._classifier(entry)
            else:
                self.translator = self._translator(entry)
        self._info = [entry.info for entry in entries]

    def _batcher(self, entry: wire.ModelEntry, result_type: Any) -> Any:
        """Where a model's items go: the engine process here (the Ray ingress overrides this)."""
        return RemoteBatcher(self.client, entry.name, result_type, self.policy())

    def _remote_model(self, entry: wire.ModelEntry, tokenizer: Any = None) -> RemoteModel:
        from mmserve.checkpoints import read_config

        info = BackendInfo(backend=entry.info["backend"], device=entry.info["device"], source=Path(entry.source),
                           weights_sha256=entry.info["sha256"], parameters=entry.info.get("parameters"))
        return RemoteModel(entry.name, read_config(entry.source), info, tokenizer)

    def _classifier(self, entry: wire.ModelEntry) -> ServedClassifier:
        s = self.settings
        limits = ImageLimits(max_bytes=s.limits.max_image_bytes, max_pixels=s.limits.max_image_pixels)
        batcher = self._batcher(entry, wire.Row)
        if self.classifier is not None:
            self.classifier.close()
        return ServedClassifier(self._remote_model(entry), self.policy(), limits, self.metrics,
                                s.preprocess_processes, self.run_in_pool, batcher=batcher)

    def _translator(self, entry: wire.ModelEntry) -> Any:
        from mmserve.tasks.translation import load_tokenizer

        from .translate import ServedTranslator

        batcher = self._batcher(entry, tuple[list[int], float])
        model = self._remote_model(entry, load_tokenizer(entry.source))
        return ServedTranslator(model, self.settings, self.metrics, batcher=batcher)

    # ------------------------------------------------------------------ queries

    def model_info(self) -> list[dict[str, Any]]:
        return list(self._info)

    def render_metrics(self) -> bytes:
        return self.metrics.render()  # the engine keeps the queue-depth gauges itself


def create_frontend_app(settings: ServerSettings, endpoint: str, log_format: Optional[str] = None) -> FastAPI:
    """The app factory uvicorn calls in each frontend process (see server/supervisor.py)."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format=log_format or "%(asctime)s %(levelname)s %(name)s [frontend %(process)d]: %(message)s")
    return create_app(settings, state=RemoteState(settings, endpoint))
