"""`mmserve serve`: run the batched inference server (FastAPI under uvicorn).

Every flag has an `MMSERVE_*` environment variable (flags win); limits and the rest of the knobs are
environment-only (see server/settings.py). With no model named anywhere (--classifier, --translator,
--model, --model-repository or their environment variables) it serves the bundled models/digits-vit,
its SoftMax twin models/digits-vit-softmax and models/numbers-en-de.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import typer

from mmserve.errors import UserError

__all__ = ["serve", "build_settings", "run_server", "run_in_process"]

_BUNDLED = {"classifier": "digits-vit", "translator": "numbers-en-de"}
_BUNDLED_EXTRA = ["digits-vit-softmax"]  # the SoftMax twin, served beside the MultiMax model for comparison
_MODEL_SOURCES = ("classifier", "translator", "models", "model_repository")
_HINT = {"model": "make train-bundled (or pass --model DIR)",
         "classifier": "make train-bundled (or pass --classifier DIR)",
         "translator": "make train-bundled (or pass --translator DIR)"}


def _check_dir(path: Path, what: str, bundled: bool) -> Path:
    if not path.is_dir() or not (path / "config.json").is_file():
        problem = "does not exist" if not path.exists() else "is not a model or export directory (no config.json)"
        hint = f"; create it with {_HINT[what]}" if bundled else ""
        raise UserError(f"{path}: {what} {problem}{hint}")
    return path


def build_settings(**overrides):
    """ServerSettings from the environment, with the CLI's explicit values on top and the bundled
    models as the default when no model was named anywhere."""
    from pydantic import ValidationError

    from server.settings import ServerSettings, default_model_dir

    given = {k: v for k, v in overrides.items() if v is not None and v != []}
    env = {k.upper() for k in os.environ}
    bundled = set()
    if not any(k in given for k in _MODEL_SOURCES) and not env & {f"MMSERVE_{k.upper()}" for k in _MODEL_SOURCES}:
        for what, name in _BUNDLED.items():
            given[what] = default_model_dir(name)
            bundled.add(what)
        given["models"] = [default_model_dir(name) for name in _BUNDLED_EXTRA]
        bundled.add("models")
    try:
        settings = ServerSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise UserError(f"invalid server settings: {problems}") from None
    for what in _BUNDLED:
        path = getattr(settings, what)
        if path is not None:
            _check_dir(Path(path), what, what in bundled)
    for path in settings.models:
        _check_dir(Path(path), "model", "models" in bundled)
    repository = settings.model_repository
    if repository is not None and not Path(repository).is_dir():
        raise UserError(f"{repository}: model repository does not exist or is not a directory")
    import importlib

    from server.backends import available_backends

    for module in settings.plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"plugin module {module!r} cannot be imported: {exc}") from None
    if settings.backend not in available_backends():
        raise UserError(f"unknown backend {settings.backend!r} (available: {', '.join(available_backends())})")
    return settings


def run_server(settings) -> None:
    """Serve until SIGINT/SIGTERM. Split by default: `settings.frontends` HTTP processes and one
    engine process (server/supervisor.py); `frontends=0` runs everything in this process."""
    from server.supervisor import default_frontends

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    frontends = default_frontends() if settings.frontends is None else settings.frontends
    if frontends > 0:
        from server.supervisor import run_split

        error = run_split(settings, frontends)
        if error is not None:
            raise UserError(f"the server stopped because a model failed to load: {error}")
        return
    run_in_process(settings)


def run_in_process(settings) -> None:
    """The whole server in this process: one event loop for HTTP and the batchers' results."""
    import uvicorn

    from server.app import create_app

    app = create_app(settings)
    state = app.state.server
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        server_header=False,
    )
    server = uvicorn.Server(config)
    state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    if state.status == "failed":
        raise UserError(f"the server stopped because a model failed to load: {state.error}")


def serve(
    classifier: Optional[Path] = typer.Option(None, help="image classifier: model dir (torch) or ONNX export dir"),
    translator: Optional[Path] = typer.Option(None, help="translator: model dir (torch) or ONNX export dir"),
    model: list[Path] = typer.Option([], help="one more model (any task): model dir or ONNX export dir; repeatable"),
    model_repository: Optional[Path] = typer.Option(
        None, help="directory whose every subdirectory is a model (broken ones are reported, the rest serve)"),
    default_classifier: Optional[str] = typer.Option(None, help="model name /classify uses when none is named"),
    default_translator: Optional[str] = typer.Option(None, help="model name /translate uses when none is named"),
    backend: Optional[str] = typer.Option(None, help="torch | onnxruntime | tensorrt (any registered backend)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda[:N]"),
    host: Optional[str] = typer.Option(None, help="bind address [127.0.0.1]"),
    port: Optional[int] = typer.Option(None, help="port [8000]"),
    max_batch_size: Optional[int] = typer.Option(None, help="items per model run [32]"),
    max_queue_delay_ms: Optional[float] = typer.Option(None, help="wait this long to fill a batch [2]"),
    max_queue_size: Optional[int] = typer.Option(None, help="queued items per model before 503 [1024]"),
    frontends: Optional[int] = typer.Option(
        None, help="HTTP frontend processes in front of one engine process (0 = one process for everything) "
                   "[one per two cores, 1..8]"),
    workers: Optional[int] = typer.Option(None, help="threads decoding uploads / tokenising [2]"),
    preprocess_processes: Optional[int] = typer.Option(
        None, help="processes decoding + preprocessing images, to use every core (0 = threads) [0]"),
    threads: Optional[int] = typer.Option(
        None, help="threads per model (0 = backend default) [1]; a translator on onnxruntime runs N decode "
                   "lanes of 1 intra-op thread each (see --decode-lanes)"),
    decode_lanes: Optional[int] = typer.Option(
        None, help="translator: decode loops side by side, sharing --threads (1 = one loop with every "
                   "thread) [onnxruntime: --threads; other backends: 1]"),
    max_batch_tokens: Optional[int] = typer.Option(None, help="translator token budget per step [8192]"),
    onnx_cache_dir: Optional[Path] = typer.Option(None, help="where checkpoints get exported for onnxruntime"),
    plugin: list[str] = typer.Option([], help="module to import first (may register a backend); repeatable"),
    cors_origin: list[str] = typer.Option([], help="allow this browser origin (CORS is off by default)"),
    log_level: Optional[str] = typer.Option(None, help="critical|error|warning|info|debug"),
    access_log: Optional[bool] = typer.Option(None, "--access-log/--no-access-log"),
    ray: bool = typer.Option(False, "--ray", help="serve on Ray Serve (pip install 'mmserve[ray]'), same API"),
    ray_address: Optional[str] = typer.Option(None, help="--ray: join this cluster [a private local Ray]"),
    replicas: int = typer.Option(1, min=1, help="--ray: replicas per model"),
) -> None:
    """Serve /classify and /translate with per-model dynamic batching (API key: MMSERVE_API_KEY)."""
    settings = build_settings(
        classifier=classifier, translator=translator, models=model, model_repository=model_repository,
        default_classifier=default_classifier, default_translator=default_translator, backend=backend, device=device, host=host, port=port,
        max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms, max_queue_size=max_queue_size,
        frontends=frontends, workers=workers, preprocess_processes=preprocess_processes, intra_op_threads=threads,
        decode_lanes=decode_lanes, max_batch_tokens=max_batch_tokens, onnx_cache_dir=onnx_cache_dir,
        plugins=plugin, cors_origins=cors_origin, log_level=log_level, access_log=access_log,
    )
    if ray:
        from .ray_cmd import run_on_ray

        return run_on_ray(settings, ray_address, replicas)
    run_server(settings)
