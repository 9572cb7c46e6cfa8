"""Whether TensorRT and a CUDA GPU are here, asked without importing TensorRT at module import time.

Everything TensorRT-specific in mmserve imports `tensorrt` through `import_tensorrt()`, so a machine
without it (every CPU-only dev box and CI runner of this project) can import the package, run the pure
parts and get one clear line when it asks for an engine.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

from mmserve.errors import UserError

__all__ = ["TensorRTUnavailable", "import_tensorrt", "require_cuda", "unavailable_reason", "tensorrt_version"]

INSTALL_HINT = (
    "install NVIDIA's wheel on a machine with a CUDA GPU, e.g. "
    "`pip install tensorrt-cu12` (its libraries come from NVIDIA's own package index)"
)


class TensorRTUnavailable(UserError):
    """TensorRT (or the GPU it needs) is not available on this machine."""


def import_tensorrt() -> Any:
    """The `tensorrt` module, or TensorRTUnavailable with an install hint."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:  # also OSError-wrapped ImportErrors from missing libnvinfer
        raise TensorRTUnavailable(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from exc
    except OSError as exc:
        raise TensorRTUnavailable(f"TensorRT is installed but its libraries do not load ({exc}); {INSTALL_HINT}") from exc


def require_cuda() -> None:
    """Raise TensorRTUnavailable unless torch sees a CUDA device (engines are built and run on it)."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT engines are built and run "
            "on an NVIDIA GPU with a CUDA build of torch"
        )


def unavailable_reason() -> Optional[str]:
    """None when TensorRT and a CUDA GPU are both usable, else the one-line reason (for SKIPPED lines)."""
    try:
        import_tensorrt()
        require_cuda()
    except TensorRTUnavailable as exc:
        return str(exc)
    return None


def tensorrt_version() -> Optional[str]:
    try:
        return str(import_tensorrt().__version__)
    except TensorRTUnavailable:
        return None
