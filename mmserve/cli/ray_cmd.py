"""`mmserve serve --ray` and `mmserve ray-config`: the server on Ray Serve (server/ray_serve/).

`serve --ray` without `--ray-address` starts a private Ray on this machine (loopback only, no
dashboard, no usage statistics), deploys the application and, on Ctrl-C / SIGTERM, removes it and
stops every Ray process it started. With `--ray-address` it joins that cluster, deploys, and on exit
removes only its application (and Serve, if it started Serve there).

`ray-config` writes the same application as a Serve config file for `serve run` / `serve deploy`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import typer

from mmserve.errors import UserError

__all__ = ["run_on_ray", "ray_config", "app_args"]

log = logging.getLogger("mmserve.cli.ray")

_MISSING = "Ray is not installed: pip install 'mmserve[ray]'"


def _require_ray() -> None:
    """Fail with the install hint (exit 2) instead of an ImportError; without importing Ray, which
    must first see the environment server/ray_serve/cluster.py sets."""
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise UserError(_MISSING)


def app_args(settings: Any, replicas: int = 1, **options: Any):
    from server.ray_serve.app import RayAppArgs, settings_args

    return RayAppArgs(settings=settings_args(settings), replicas=replicas,
                      **{k: v for k, v in options.items() if v is not None})


def _start_serve(settings: Any) -> bool:
    """Start Serve's HTTP proxies on host:port, or check the running Serve listens there.
    Returns True when this process started Serve (and so stops it on exit)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        http = client.http_config
        if (http.host, http.port) != (settings.host, settings.port):
            raise UserError(f"Serve already runs on this cluster on {http.host}:{http.port}; pass --host "
                            f"{http.host} --port {http.port} (Serve has one HTTP address per cluster)")
        return False
    serve.start(http_options={"host": settings.host, "port": settings.port})
    return True


def run_on_ray(settings: Any, address: Optional[str], replicas: int) -> None:
    """Deploy on Ray and serve until SIGINT/SIGTERM; then remove what this process created."""
    _require_ray()
    from server.ray_serve import cluster
    from server.ray_serve.app import APP_NAME, build_app, resolve_models

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    # A private Ray counts logical CPUs for placement only: enough for every replica (1 CPU each,
    # the ingress included) even where the machine has fewer cores, which then share them.
    try:
        models = len(resolve_models(settings)[0])
    except ValueError as exc:  # a broken model directory, a default model not served: before Ray starts
        raise UserError(f"cannot serve these models: {exc}") from None
    cluster.start_or_join(address, num_cpus=None if address else max(os.cpu_count() or 1, models * replicas + 1))
    # After ray.init: Ray's own fatal-signal handler would end this process without cleaning up.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started_serve = False
    try:
        from ray import serve

        started_serve = _start_serve(settings)
        try:
            serve.run(build_app(app_args(settings, replicas)), name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as exc:  # a deployment failed (e.g. a model did not load): say why, exit 2
            raise UserError(f"the Ray Serve application failed to deploy: {exc}") from None
        log.info("serving on Ray at http://%s:%d (%d replica(s) per model); Ctrl-C stops",
                 settings.host, settings.port, replicas)
        while not stop.wait(1.0):
            pass
        log.info("stopping: removing the application")
    finally:
        try:
            from ray import serve

            if started_serve:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        except Exception:  # Ray already gone: nothing left to remove
            log.debug("removing the application failed", exc_info=True)
        cluster.stop()


def ray_config(
    classifier: Optional[Path] = typer.Option(None, help="image classifier: model dir or ONNX export dir"),
    translator: Optional[Path] = typer.Option(None, help="translator: model dir or ONNX export dir"),
    model: list[Path] = typer.Option([], help="one more model (any task): model dir or ONNX export dir; repeatable"),
    model_repository: Optional[Path] = typer.Option(None, help="directory whose every subdirectory is a model"),
    default_classifier: Optional[str] = typer.Option(None, help="model name /classify uses when none is named"),
    default_translator: Optional[str] = typer.Option(None, help="model name /translate uses when none is named"),
    backend: Optional[str] = typer.Option(None, help="torch | onnxruntime | tensorrt"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda[:N]"),
    host: Optional[str] = typer.Option(None, help="address Serve's HTTP proxies bind [127.0.0.1]"),
    port: Optional[int] = typer.Option(None, help="port [8000]"),
    max_batch_size: Optional[int] = typer.Option(None, help="items per model run [32]"),
    max_queue_delay_ms: Optional[float] = typer.Option(None, help="wait this long to fill a batch [2]"),
    replicas: int = typer.Option(1, min=1, help="replicas per model"),
    min_replicas: Optional[int] = typer.Option(None, min=0, help="autoscaling: at least this many per model"),
    max_replicas: Optional[int] = typer.Option(None, min=1, help="autoscaling: at most this many per model"),
    num_cpus: Optional[float] = typer.Option(None, min=0, help="CPUs per model replica [1]"),
    num_gpus: Optional[float] = typer.Option(None, min=0, help="GPUs per model replica, fractions allowed [0]"),
    max_ongoing_requests: Optional[int] = typer.Option(None, min=1, help="per model replica [2 x batch size]"),
) -> None:
    """Print a Ray Serve config file for these models: mmserve ray-config ... > serve.yaml; serve run serve.yaml."""
    import yaml

    from server.ray_serve.app import resolve_models, serve_config

    from .serve_cmd import build_settings

    settings = build_settings(classifier=classifier, translator=translator, models=model,
                              model_repository=model_repository, default_classifier=default_classifier,
                              default_translator=default_translator, backend=backend, device=device,
                              host=host, port=port, max_batch_size=max_batch_size,
                              max_queue_delay_ms=max_queue_delay_ms)
    try:
        resolve_models(settings)
    except ValueError as exc:
        raise UserError(f"cannot serve these models: {exc}") from None
    if (min_replicas is None) != (max_replicas is None):
        raise UserError("give both --min-replicas and --max-replicas for autoscaling, or neither")
    autoscaling = None
    if max_replicas is not None:
        if min_replicas > max_replicas:
            raise UserError(f"--min-replicas {min_replicas} is more than --max-replicas {max_replicas}")
        autoscaling = {"min_replicas": min_replicas, "max_replicas": max_replicas}
    args = app_args(settings, replicas, autoscaling=autoscaling, num_cpus=num_cpus, num_gpus=num_gpus,
                    max_ongoing_requests=max_ongoing_requests)
    sys.stdout.write(yaml.safe_dump(serve_config(args, settings.host, settings.port), sort_keys=False))
