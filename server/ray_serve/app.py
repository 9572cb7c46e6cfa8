"""The Ray Serve application of mmserve: its arguments, its builder and its config file.

`build_app` is an application builder in Ray's sense, so every way Ray users deploy works:

    serve run server.ray_serve.app:build_app settings='{"classifier": "models/digits-vit"}'
    serve run serve.yaml          # written by `mmserve ray-config ...`
    serve deploy serve.yaml       # onto a running cluster (`ray start --head` ...)
    mmserve serve --ray ...       # starts or joins Ray, deploys, stops on Ctrl-C

Deployments: one per model, named after the model (`digits-vit`, `numbers-en-de`), and the ingress
`mmserve`. Their Ray options (replicas or autoscaling, CPUs/GPUs per replica, max_ongoing_requests)
come from `RayAppArgs`, and a config file's `deployments:` section can override any of them, as Ray
documents for every application.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..settings import ServerSettings

__all__ = ["RayAppArgs", "build_app", "build_application", "settings_args", "serve_config", "APP_NAME", "INGRESS_NAME"]

APP_NAME = "mmserve"
INGRESS_NAME = "mmserve"
IMPORT_PATH = "server.ray_serve.app:build_app"


class RayAppArgs(BaseModel):
    """The application's arguments (`args:` in a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(description="ServerSettings fields (as `mmserve serve` takes them); "
                                                 "MMSERVE_* variables on the nodes fill in the rest")
    replicas: int = Field(1, ge=1, description="replicas per model (ignored with autoscaling)")
    autoscaling: Optional[dict[str, Any]] = Field(
        None, description="Ray's autoscaling_config per model, e.g. {min_replicas: 1, max_replicas: 4}")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per model replica (Ray's ray_actor_options)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model replica; fractions share a GPU")
    max_ongoing_requests: Optional[int] = Field(
        None, ge=1, description="requests one model replica holds at once [2 x max_batch_size]: at least the "
                                "batch size, or its batcher can never fill a batch")
    ingress_replicas: int = Field(1, ge=1)
    ingress_num_cpus: float = Field(1.0, ge=0)
    ingress_max_ongoing_requests: int = Field(256, ge=1)


def settings_args(settings: ServerSettings) -> dict[str, Any]:
    """ServerSettings as plain JSON values for the replicas. The API key is left out on purpose: it
    never goes into a config file or Ray's records; replicas read MMSERVE_API_KEY from their env."""
    values = settings.model_dump(mode="json", exclude={"api_key"})
    for key in ("classifier", "translator", "model_repository", "onnx_cache_dir"):  # replicas do not share our cwd
        if values.get(key):
            values[key] = str(Path(values[key]).resolve())
    values["models"] = [str(Path(p).resolve()) for p in values.get("models") or []]
    return values


def resolve_models(settings: ServerSettings) -> tuple[list[Any], list[Any]]:
    """The models to deploy and the ones that cannot be served, from the very list `mmserve serve`
    resolves (--classifier, --translator, --model..., --model-repository; same names, same order).
    A broken directory named explicitly, or a default model that is not served, fails the build
    (`mmserve serve` fails too); a broken one in the repository is reported as "failed" in /v1/models."""
    from ..state import ServerState

    state = ServerState(settings)
    for spec in state.specs():
        state._add_slot(spec)
    slots = list(state.slots.values())
    fatal = [f"{slot.name}: {slot.reason}" for slot in slots if slot.state == "failed" and not slot.spec.from_repository]
    for task, name in (("image-classification", settings.default_classifier), ("translation", settings.default_translator)):
        if name is not None and (name not in state.slots or state.slots[name].task != task):
            fatal.append(f"default {task} model {name!r} is not served (models: {state.names_for(task)})")
    deploy = [slot.spec for slot in slots if slot.state != "failed"]
    if fatal or not deploy:
        raise ValueError("; ".join(fatal) or "no model to serve")
    return deploy, [slot for slot in slots if slot.state == "failed"]


def build_app(args: RayAppArgs | dict[str, Any]) -> Any:
    """The application builder of `serve run` / `serve deploy` (Ray calls it with one argument)."""
    return build_application(args)


def build_application(args: RayAppArgs | dict[str, Any], model_server: Optional[type] = None) -> Any:
    """The Ray Serve application: one deployment per model, and the ingress bound to their handles.
    `model_server`: another class for the model deployments (benchmarks/bench_ray.py puts Ray's
    `@serve.batch` in place of the project's batcher with it)."""
    from ray import serve

    from .deployments import Ingress, ModelServer, failed_entry, settings_from_args

    model_server = model_server or ModelServer

    if not isinstance(args, RayAppArgs):
        args = RayAppArgs.model_validate(args)
    settings = settings_from_args(args.settings)  # invalid settings fail here, before any replica starts
    values = settings_args(settings)
    ongoing = args.max_ongoing_requests or 2 * settings.max_batch_size
    specs, failed = resolve_models(settings)
    models = {}
    for spec in specs:
        scaling: dict[str, Any] = ({"autoscaling_config": args.autoscaling} if args.autoscaling
                                   else {"num_replicas": args.replicas})
        deployment = serve.deployment(model_server).options(
            name=spec.name,
            ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
            max_ongoing_requests=ongoing,
            max_queued_requests=settings.max_queue_size,  # beyond: BackPressureError -> 503 overloaded
            graceful_shutdown_timeout_s=settings.shutdown_grace_s,
            health_check_period_s=2.0,
            **scaling,
        )
        models[spec.name] = deployment.bind(values, str(spec.path.absolute()), spec.from_repository)
    ingress = serve.deployment(Ingress).options(
        name=INGRESS_NAME,
        num_replicas=args.ingress_replicas,
        ray_actor_options={"num_cpus": args.ingress_num_cpus},
        max_ongoing_requests=args.ingress_max_ongoing_requests,
        graceful_shutdown_timeout_s=settings.shutdown_grace_s,
    )
    return ingress.bind(values, models, [failed_entry(slot) for slot in failed])


def serve_config(args: RayAppArgs, host: str, port: int) -> dict[str, Any]:
    """A Serve config file (what `serve run` / `serve deploy` read) for this application. Every node
    needs mmserve installed (`pip install mmserve[ray]`) and the model directories at these paths."""
    app: dict[str, Any] = {"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                           "args": args.model_dump(mode="json", exclude_none=True)}
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port}, "applications": [app]}
