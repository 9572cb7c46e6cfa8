"""The ingress replica's state: the models' request-side halves, with batchers that call Ray.

The ingress runs the very `create_app` of `mmserve serve` (routes, limits, error codes, request
ids), like a frontend process of split serving does. `RayState` is the frontend's `RemoteState` with
the ZeroMQ engine connection replaced by one Ray Serve `DeploymentHandle` per model: it asks each
model deployment to describe itself (labels, tokenizer directory, /v1/models entry) and becomes ready
when all have answered, which Ray only lets happen once a replica has loaded and warmed up its model.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Hashable, Optional, Sequence

import numpy as np

from .. import wire
from ..batching import BatchPolicy
from ..engine_client import EngineUnavailable
from ..errors import ApiError, Overloaded
from ..frontend import RemoteState
from ..settings import ServerSettings
from ..state import ServerState

__all__ = ["RayState", "RayBatcher", "DESCRIBE_TIMEOUT_S"]

log = logging.getLogger("mmserve.server.ray")

DESCRIBE_TIMEOUT_S = 5.0
_RETRY_S = 0.5


def _replica_lost(exc: BaseException) -> bool:
    """Errors that mean "the replica holding this request died or is unreachable" (retryable 503)."""
    from ray import exceptions as ray_exceptions

    return isinstance(exc, (ray_exceptions.RayActorError, ray_exceptions.ActorUnavailableError,
                            ray_exceptions.ActorDiedError))


class RayBatcher:
    """Stands in for a model's batcher inside the ingress: same `submit` as the in-process batchers
    and `RemoteBatcher`; the batching itself runs in a replica of the model's deployment."""

    def __init__(self, handle: Any, model: str, policy: BatchPolicy) -> None:
        self.handle = handle
        self.name = model
        self.policy = policy

    async def submit(self, payloads: Sequence[Any], key: Hashable = None, request_id: str = "") -> list[Any]:
        from ray.serve.exceptions import BackPressureError

        # Pixel rows travel as one stacked array (Ray ships numpy buffers without pickling them).
        items: Any = np.stack(payloads) if payloads and isinstance(payloads[0], np.ndarray) else list(payloads)
        try:
            results, error = await self.handle.submit.remote(items, key, request_id)
        except BackPressureError:
            raise Overloaded(self.name, 1) from None
        except Exception as exc:
            if _replica_lost(exc):
                raise EngineUnavailable(f"a replica of model {self.name!r} stopped while holding this request; "
                                        "Ray is replacing it, retry shortly") from None
            raise
        if error is not None:
            raise ApiError(error.status, error.code, error.detail, headers=dict(error.headers) or None)
        return results

    def stop(self, drain: bool = True, timeout: Optional[float] = None) -> None:
        """Nothing to stop here: each model replica drains its own batcher."""


class RayState(RemoteState):
    """ServerState of an ingress replica: models are described by their Ray deployments.

    Reuses RemoteState's model mirroring (`_adopt` into `ModelSlot`s, `_classifier`, `_translator`,
    `_policy`) and replaces only where the models live, so a frontend and an ingress never drift apart.
    `handles`: model name -> DeploymentHandle, in the order `mmserve serve` lists the models;
    `failed`: entries of models that could not be deployed (shown as "failed" in /v1/models)."""

    def __init__(self, settings: ServerSettings, handles: dict[str, Any],
                 failed: Optional[list[dict[str, Any]]] = None) -> None:
        ServerState.__init__(self, settings)  # not RemoteState.__init__: no engine socket here
        self.handles = handles
        self.failed = [wire.ModelEntry(**entry) for entry in failed or []]
        self._entries: dict[str, wire.ModelEntry] = {}

    def _batcher(self, entry: wire.ModelEntry, result_type: Any) -> RayBatcher:
        return RayBatcher(self.handles[entry.name], entry.name, self._policy(entry))

    async def start(self) -> None:
        """Ask every model deployment to describe itself until all answered (they answer only once
        loaded and warm), then serve. Runs in create_app's lifespan; never raises."""
        entries: dict[str, wire.ModelEntry] = {}
        while len(entries) < len(self.handles):
            for name, handle in self.handles.items():
                if name in entries:
                    continue
                try:
                    described = await asyncio.wait_for(handle.describe.remote(), DESCRIBE_TIMEOUT_S)
                except Exception as exc:  # replicas still starting, or one restarting: ask again
                    log.info("ingress: deployment %s not ready yet (%s)", name, type(exc).__name__)
                    continue
                entries[name] = wire.ModelEntry(**described)
            if len(entries) < len(self.handles):
                await asyncio.sleep(_RETRY_S)
        try:  # the models in the order they were given, as `mmserve serve` lists them
            self._adopt([entries[name] for name in self.handles] + self.failed)
        except Exception as exc:  # a model dir this node cannot read: never ready, say why
            log.exception("ingress: reading the models' directories failed")
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            return
        self.status = "ready"
        self.metrics.ready.set(1)
        log.info("ingress: ready (%s)", ", ".join(entries))

    def describe_slot(self, slot: Any) -> dict[str, Any]:
        """The replica's /v1/models entry, with `default` as this ingress decides it (a replica
        holds one model, which is always its own default)."""
        entry = super().describe_slot(slot)
        entry["state"], entry["reason"] = slot.state, slot.reason
        entry["default"] = slot.task is not None and self.default_model(slot.task) == slot.name
        return entry

    async def load(self, name: str) -> dict[str, Any]:
        return self._not_on_ray("load", name)

    async def unload(self, name: str) -> dict[str, Any]:
        return self._not_on_ray("unload", name)

    def _not_on_ray(self, action: str, name: str) -> dict[str, Any]:
        self._check_running()
        if name not in self.slots:
            raise ApiError(404, "unknown_model", f"no model named {name!r}; known models: {sorted(self.slots)}")
        raise ApiError(501, "not_supported_on_ray",
                       f"{action}ing a model at runtime is not supported on Ray: each model is a Ray Serve "
                       "deployment; change the models and redeploy (serve deploy / mmserve serve --ray)")

    async def stop(self) -> None:
        if self.status != "failed":
            self.status = "stopping"
        self.metrics.ready.set(0)
        for served in self.served():  # free the preprocessing workers; each replica drains its own batcher
            if hasattr(served, "close"):
                served.close()
