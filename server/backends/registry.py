"""Backend registry: name -> loader. A new runtime is ONE registration, in any of three ways:

1. `register_backend("tensorrt", load_fn)` in a module the server imports (`--plugin mod`, or
   `MMSERVE_PLUGINS=mod`);
2. an entry point in the group ``mmserve.backends`` (``tensorrt = "plugins.tensorrt.serving:load"``);
3. a line in `_BUILTIN` below (lazy "module:function" strings, so torch/onnxruntime are only imported
   when asked for).

A loader has the signature `load(path: Path, task: str, options: LoadOptions) -> Backend`.
"""

from __future__ import annotations

import importlib
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Union

from mmserve.errors import UserError

from .base import Backend, LoadOptions

__all__ = ["BackendLoader", "register_backend", "available_backends", "load_backend", "UnknownBackendError"]

BackendLoader = Callable[[Path, str, LoadOptions], Backend]

_BUILTIN: dict[str, str] = {
    "torch": "server.backends.torch_backend:load",
    "onnxruntime": "server.backends.onnxruntime_backend:load",
    "native": "server.backends.native_backend:load",
    "tensorrt": "plugins.tensorrt.serving:load",
}
_registry: dict[str, Union[BackendLoader, str]] = dict(_BUILTIN)
_lock = threading.Lock()
_entry_points_loaded = False


class UnknownBackendError(UserError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown backend {name!r} (available: {', '.join(available_backends())})")


def register_backend(name: str, loader: Union[BackendLoader, str], *, replace: bool = False) -> None:
    """Make `--backend NAME` load models with `loader` (a callable or a lazy "module:function")."""
    with _lock:
        if name in _registry and not replace and _registry[name] is not loader:
            raise ValueError(f"backend {name!r} is already registered (pass replace=True to override)")
        _registry[name] = loader


def unregister_backend(name: str) -> None:
    """Remove a registration (tests use this to clean up after injecting a fault backend)."""
    with _lock:
        _registry.pop(name, None)
        if name in _BUILTIN:
            _registry[name] = _BUILTIN[name]


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="mmserve.backends"):
        with _lock:
            _registry.setdefault(ep.name, ep.value)


def available_backends() -> list[str]:
    _load_entry_points()
    return sorted(_registry)


def _resolve(name: str) -> BackendLoader:
    _load_entry_points()
    loader = _registry.get(name)
    if loader is None:
        raise UnknownBackendError(name)
    if isinstance(loader, str):
        module, _, attr = loader.partition(":")
        try:
            loader = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise UserError(f"backend {name!r} cannot be imported here ({loader}): {exc}") from exc
    return loader


def load_backend(name: str, path: Path | str, task: str, options: LoadOptions) -> Backend:
    """Load the model at `path` for `task` on the backend registered as `name`."""
    backend = _resolve(name)(Path(path), task, options)
    if backend.task != task:
        raise UserError(f"{path}: backend {name!r} loaded a {backend.task!r} model where {task!r} was expected")
    return backend
