"""The two Ray Serve deployments: one per model (`ModelServer`) and the HTTP ingress (`Ingress`).

`ModelServer` is the engine of split serving for one model: the ordinary `ServerState` (backend,
warm-up, the project's dynamic or continuous batcher with its queue bounds and timeouts). Ray routes
requests to a replica only after its constructor returned, i.e. after the model loaded and warmed up,
so a replica that Ray is (re)starting never receives work. The batcher, not `@serve.batch`, does the
batching: it is the one `mmserve serve` uses (per-key batches for explain, continuous batching for
the translator, queue bounds) and benchmarks/bench_ray.py measures it against `@serve.batch`.

`Ingress` is `create_app` itself behind `@serve.ingress`: same routes, schemas, limits, error codes
and request ids as `mmserve serve`.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
from ray import serve

from .. import wire
from ..app import create_app
from ..errors import ApiError
from ..settings import ServerSettings
from ..state import ServerState
from .ingress_state import RayState

__all__ = ["ModelServer", "Ingress", "settings_from_args", "failed_entry"]

log = logging.getLogger("mmserve.server.ray")


def settings_from_args(args: dict[str, Any], model: Optional[str] = None) -> ServerSettings:
    """ServerSettings in a replica: the values the application was built with, the node's
    `MMSERVE_*` environment for the rest (e.g. MMSERVE_API_KEY, which never goes into a config file).
    `model`: a model replica's settings, which name that one model directory and nothing else."""
    values = dict(args)
    if model is not None:
        values.update(classifier=None, translator=None, models=[model], model_repository=None,
                      default_classifier=None, default_translator=None)
    return ServerSettings(**values)


def failed_entry(slot: Any) -> dict[str, Any]:
    """The ingress's entry (`wire.ModelEntry` fields) of a model that cannot be deployed (a broken
    repository directory): /v1/models lists it as "failed", with the reason."""
    source = str(slot.spec.path)
    info = {"name": slot.name, "task": slot.task, "source": source, "state": "failed", "reason": slot.reason}
    return {"name": slot.name, "task": slot.task or "", "source": source, "info": info, "state": "failed",
            "reason": slot.reason}


def _bind_inter_replica_grpc_to_node_ip() -> None:
    """Ray Serve (2.60) starts each replica's inter-deployment gRPC server on "[::]:0", every
    interface, unlike the rest of Ray which binds the node's IP. Bind it to the node's IP too (the
    loopback address on a local cluster), so a local cluster listens on 127.0.0.1 only. Checked by
    tests/test_ray_serve.py, so a Ray upgrade that moves this fails a test instead of listening wide."""
    import ray
    from ray._common.network_utils import build_address
    from ray.serve._private import replica

    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_mmserve_node_ip", False):
        return

    def add_port(server: Any, address: str) -> int:
        if address == "[::]:0":
            address = build_address(ray.util.get_node_ip_address(), 0)
        return original(server, address)

    add_port._mmserve_node_ip = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port


class ModelServer:
    """One model's replica: loads, warms up and batches exactly as the in-process server does."""

    async def __init__(self, settings: dict[str, Any], model_dir: str, from_repository: bool = False) -> None:
        _bind_inter_replica_grpc_to_node_ip()
        logging.basicConfig(level=settings.get("log_level", "info").upper())
        self.state = ServerState(settings_from_args(settings, model=model_dir))
        await self.state.start()  # loads in a thread (its serving.json applies), warms up, starts the batcher
        if not self.state.ready:
            # Ray counts a failed constructor and, after a few, marks the deployment failed:
            # `serve run` / `mmserve serve --ray` then stop with this reason.
            raise RuntimeError(f"loading the model in {model_dir} failed: {self.state.error}")
        (self.slot,) = self.state.slots.values()
        self.served = self.slot.served

    async def submit(self, items: Any, key: Any,
                     request_id: str) -> tuple[Optional[list[Any]], Optional[wire.ErrorInfo]]:
        """Run a request's items through the batcher. An ApiError (queue full, timeout, backend
        fault) comes back as data, so the ingress answers with the same status and code."""
        payloads = list(items) if isinstance(items, np.ndarray) else items
        try:
            return await self.served.batcher.submit(payloads, key=key, request_id=request_id), None
        except ApiError as exc:
            return None, wire.ErrorInfo(exc.status, exc.code, exc.detail, dict(exc.headers or {}))

    def describe(self) -> dict[str, Any]:
        """What the ingress needs to serve this model (`wire.ModelEntry` fields), as the split engine
        reports a slot: its /v1/models entry (batching policy included) and the directory of its
        config/tokenizer."""
        slot = self.slot
        return {"name": slot.name, "task": slot.task or "", "source": str(slot.spec.path),
                "info": self.state.describe_slot(slot), "state": slot.state, "reason": slot.reason}

    def check_health(self) -> None:
        """Ray's health check: a replica whose state left "ready" is replaced."""
        if not self.state.ready:
            raise RuntimeError(f"model state is {self.state.status}: {self.state.error}")

    async def __del__(self) -> None:
        """Graceful shutdown (scale-down, redeploy): refuse new items, finish the queued ones."""
        await self.state.stop()


@serve.ingress()
class Ingress:
    """The HTTP ingress: `create_app` with a state whose batchers call the model deployments."""

    def __init__(self, settings: dict[str, Any], models: dict[str, Any],
                 failed: Optional[list[dict[str, Any]]] = None) -> None:
        _bind_inter_replica_grpc_to_node_ip()
        logging.basicConfig(level=settings.get("log_level", "info").upper())
        self.settings = settings_from_args(settings)
        self.models = models  # model name -> DeploymentHandle (Ray replaced the bound deployments)
        self.failed = list(failed or [])  # models that could not be deployed, shown as "failed"

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(self.settings, state=RayState(self.settings, self.models, self.failed))
        app.add_middleware(_ProxySetsRequestIdHeader)
        return app


class _ProxySetsRequestIdHeader:
    """Ray's HTTP proxy puts an X-Request-ID on every request (the client's, or one it makes) and
    adds it to every response. The app takes that id as the request's (error bodies, logs) and would
    add the header a second time: drop the app's copy so a response carries exactly one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_once(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            await send(message)

        await self.app(scope, receive, send_once)
