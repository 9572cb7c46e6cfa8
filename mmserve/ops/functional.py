"""The public MultiMax functions: `seglu` and `multimax`.

`multimax` routes through the `mmserve::multimax` custom op (fused kernels, one node for
torch.compile/torch.export/ONNX); `impl="reference"` runs the plain formula instead, with native
autograd, which is what tests compare against.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch

from . import custom_op  # noqa: F401  (registers torch.ops.mmserve.*)
from .reference import check_params, multimax_reference, seglu_reference

__all__ = ["seglu", "multimax", "Impl"]

Impl = Literal["auto", "reference"]


def seglu(x: torch.Tensor, ranges: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The MultiMax modulator (called SeLU in the authors' code), in x's dtype.

    Order N = len(ranges) // 2; order 0 (empty parameters) is the identity.
    """
    return seglu_reference(x, ranges, ts).to(x.dtype)


def multimax(
    x: torch.Tensor,
    ranges: torch.Tensor,
    ts: torch.Tensor,
    dim: int = -1,
    mask: Optional[torch.Tensor] = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """softmax(seglu(x)) along `dim`.

    mask: None, bool (True = masked out) or additive float (-inf = masked), broadcastable to x,
    applied after the modulator. Masked entries get probability exactly 0 and a fully masked row
    is all zeros (never NaN).
    """
    if not x.is_floating_point():
        raise TypeError(f"multimax needs a floating-point input, got {x.dtype}")
    check_params(ranges, ts)
    if impl == "reference":
        return multimax_reference(x, ranges, ts, dim, mask)
    if impl != "auto":
        raise ValueError(f"impl must be 'auto' or 'reference', got {impl!r}")
    return torch.ops.mmserve.multimax(x, ranges, ts, dim, mask)
