"""`mmserve::multimax` as a torch.library custom op.

One op means `torch.compile` and `torch.export` see a single node (which the ONNX exporter maps to
one `mmserve.MultiMax` node) instead of a chain of relu/pow/add. The op dispatches to a fused kernel
from `mmserve.ops.kernels` when one is registered for the tensor's device, else to the reference.
Its backward is a second custom op so that fused backward kernels plug in the same way.
"""

from __future__ import annotations

from typing import Optional

import torch

from .backward import multimax_backward_reference
from .kernels import MultiMaxKernel, select_kernel
from .reference import multimax_reference

__all__ = ["multimax_op", "multimax_backward_op"]


def _to_last_axis(x: torch.Tensor, dim: int, mask: Optional[torch.Tensor]):
    """Move `dim` last and make x contiguous; expand the mask (as a view) to x's new shape."""
    dim = dim % x.dim()
    moved = dim != x.dim() - 1
    x_last = (x.movedim(dim, -1) if moved else x).contiguous()
    mask_last = None
    if mask is not None:
        full = mask.expand_as(x)
        mask_last = full.movedim(dim, -1) if moved else full
    return x_last, mask_last, dim, moved


def _check_mask(x: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
    if mask is None:
        return
    if torch.broadcast_shapes(mask.shape, x.shape) != x.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to input {tuple(x.shape)}")


def _kernel_for(x: torch.Tensor, mask: Optional[torch.Tensor]) -> Optional[MultiMaxKernel]:
    if x.dim() == 0 or x.numel() == 0:
        return None
    return select_kernel(x, mask)


@torch.library.custom_op("mmserve::multimax", mutates_args=())
def multimax_op(
    x: torch.Tensor, ranges: torch.Tensor, ts: torch.Tensor, dim: int, mask: Optional[torch.Tensor]
) -> torch.Tensor:
    """softmax(seglu(x)) along `dim`; mask is None, bool (True = masked) or additive float."""
    _check_mask(x, mask)
    kernel = _kernel_for(x, mask)
    if kernel is None:
        return multimax_reference(x, ranges, ts, dim, mask)
    x_last, mask_last, dim, moved = _to_last_axis(x, dim, mask)
    y = kernel.forward(x_last, ranges, ts, mask_last)
    return y.movedim(-1, dim).contiguous() if moved else y


@multimax_op.register_fake
def _multimax_fake(x, ranges, ts, dim, mask):
    return torch.empty_like(x)


@torch.library.custom_op("mmserve::multimax_backward", mutates_args=())
def multimax_backward_op(
    grad_y: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    ranges: torch.Tensor,
    ts: torch.Tensor,
    dim: int,
    mask: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d_ranges, d_ts) for y = multimax(x, ranges, ts, dim, mask)."""
    kernel = _kernel_for(x, mask)
    if kernel is None or kernel.backward is None:
        return multimax_backward_reference(grad_y, y, x, ranges, ts, dim)
    x_last, _, dim, moved = _to_last_axis(x, dim, None)
    g_last = (grad_y.movedim(dim, -1) if moved else grad_y).contiguous()
    y_last = (y.movedim(dim, -1) if moved else y).contiguous()
    dx, d_ranges, d_ts = kernel.backward(g_last, y_last, x_last, ranges, ts)
    if moved:
        dx = dx.movedim(-1, dim).contiguous()
    return dx, d_ranges, d_ts


@multimax_backward_op.register_fake
def _multimax_backward_fake(grad_y, y, x, ranges, ts, dim, mask):
    return torch.empty_like(x), torch.empty_like(ranges), torch.empty_like(ts)


def _setup_context(ctx, inputs, output):
    x, ranges, ts, dim, mask = inputs
    ctx.save_for_backward(x, ranges, ts, output, mask)
    ctx.dim = dim


def _backward(ctx, grad_y):
    x, ranges, ts, y, mask = ctx.saved_tensors
    dx, d_ranges, d_ts = torch.ops.mmserve.multimax_backward(grad_y, y, x, ranges, ts, ctx.dim, mask)
    return (
        dx if ctx.needs_input_grad[0] else None,
        d_ranges if ctx.needs_input_grad[1] else None,
        d_ts if ctx.needs_input_grad[2] else None,
        None,
        None,
    )


multimax_op.register_autograd(_backward, setup_context=_setup_context)
