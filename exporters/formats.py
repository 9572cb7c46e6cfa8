"""Export formats: name -> exporter, so `mmserve export --format X` is a dispatch, not an if-chain.

An exporter is a callable

    export(model_dir: Path, out_dir: Path, *, opset: int | None, function_body: bool,
           skip_if_current: bool, progress: Callable[[str], None]) -> ExportResult-like

(anything with `out_dir`, `skipped`, `reason` and `graphs`). Formats are lazy "module:function"
strings so that `mmserve export --help` imports nothing heavy. `tensorrt` points at the module the
TensorRT helper will provide; until it exists, or where TensorRT does not import, choosing it fails
with a clear "not available here" error.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Union

from mmserve.errors import UserError

__all__ = ["FormatUnavailable", "register_format", "available_formats", "resolve_format"]

Exporter = Callable[..., Any]

_FORMATS: dict[str, Union[str, Exporter]] = {
    "onnx": "exporters.onnx.export:export_for_cli",
    "tensorrt": "exporters.tensorrt:export_for_cli",
}


class FormatUnavailable(UserError):
    """The format is known but cannot be produced on this machine."""


def register_format(name: str, exporter: Union[str, Exporter], *, replace: bool = False) -> None:
    if name in _FORMATS and not replace:
        raise ValueError(f"export format {name!r} is already registered (pass replace=True to override)")
    _FORMATS[name] = exporter


def available_formats() -> list[str]:
    return sorted(_FORMATS)


def resolve_format(name: str) -> Exporter:
    """The exporter for `name`; UserError for an unknown format, FormatUnavailable when it cannot load."""
    if name not in _FORMATS:
        raise UserError(f"unknown export format {name!r} (known: {', '.join(available_formats())})")
    exporter = _FORMATS[name]
    if callable(exporter):
        return exporter
    module, _, attr = exporter.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise FormatUnavailable(
            f"--format {name} is not available here ({exc}); "
            + ("TensorRT export needs an NVIDIA GPU with the `tensorrt` package and mmserve's TensorRT plugin"
               if name == "tensorrt" else "install the package that provides it")
        ) from exc
    except AttributeError as exc:
        raise FormatUnavailable(f"--format {name} is not available here ({exporter} has no {attr!r})") from exc
