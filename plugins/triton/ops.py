"""PyTorch entry points of the Triton MultiMax kernels, in `mmserve.ops.kernels`' kernel contract.

`multimax_forward(x, ranges, ts, mask)` and `multimax_backward(grad_y, y, x, ranges, ts)` take x
contiguous with the normalised axis last (the custom op arranges that) and a mask expanded to x's
shape with any strides (zero strides from `expand` are passed through, never materialised, as long
as the leading dims coalesce into at most three; otherwise the mask is copied once).

They run on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 was set before this module was
imported (that is how CI tests them).
"""

from __future__ import annotations

from typing import Optional

import torch

from .kernels import multimax_bwd_kernel, multimax_fwd_kernel
from .launch import BACKWARD_MAX_SINGLE_BLOCK, FORWARD_MAX_SINGLE_BLOCK, row_launch

__all__ = ["multimax_forward", "multimax_backward", "supports", "SUPPORTED_DTYPES", "make_kernel"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _packed_params(x: torch.Tensor, ranges: torch.Tensor, ts: torch.Tensor) -> tuple[torch.Tensor, int]:
    if ranges.numel() != ts.numel() or ranges.numel() % 2:
        raise ValueError(f"ranges and ts must hold 2N values each, got {ranges.numel()} and {ts.numel()}")
    order = ranges.numel() // 2
    params = torch.cat([ranges.detach().reshape(-1), ts.detach().reshape(-1)])
    params = params.to(device=x.device, dtype=torch.float32).contiguous()
    if params.numel() == 0:  # order 0: the kernel reads nothing, but needs a valid pointer
        params = torch.zeros(1, device=x.device, dtype=torch.float32)
    return params, order


def _mask_geometry(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int], int]:
    """(mask, [D0, D1, D2], [s0, s1, s2], column stride): the leading dims coalesced to at most three."""
    if tuple(mask.shape) != tuple(x.shape):
        mask = mask.expand_as(x)
    dims = [(size, stride) for size, stride in zip(mask.shape[:-1], mask.stride()[:-1]) if size != 1]
    merged: list[tuple[int, int]] = []
    for size, stride in dims:
        if merged and merged[-1][1] == stride * size:
            outer_size, _ = merged[-1]
            merged[-1] = (outer_size * size, stride)
        else:
            merged.append((size, stride))
    if len(merged) > 3:  # rare: a broadcast pattern that does not fold; copy once
        mask = mask.contiguous()
        return _mask_geometry(x, mask)
    while len(merged) < 3:
        merged.insert(0, (1, 0))
    sizes = [size for size, _ in merged]
    strides = [stride for _, stride in merged]
    return mask, sizes, strides, mask.stride(-1) if mask.dim() else 0


def supports(x: torch.Tensor, mask: Optional[torch.Tensor]) -> bool:
    """dtypes the kernels take (float64 stays on the reference path) and bool/float masks."""
    if x.dtype not in SUPPORTED_DTYPES:
        return False
    return mask is None or mask.dtype == torch.bool or mask.is_floating_point()


def multimax_forward(
    x: torch.Tensor,
    ranges: torch.Tensor,
    ts: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    max_single_block: int = FORWARD_MAX_SINGLE_BLOCK,
) -> torch.Tensor:
    """softmax(seglu(x) [+ mask]) along the last axis of a contiguous x.

    max_single_block: rows longer than this use the looping (online softmax) regime; tests lower it
    to exercise that regime on short rows.
    """
    if not x.is_contiguous():
        raise ValueError("multimax_forward needs a contiguous x with the normalised axis last")
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    params, order = _packed_params(x, ranges, ts)
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols
    launch = row_launch(n_rows, n_cols, max_single_block)
    if mask is None:
        kind, mask_arg, sizes, strides, col_stride = 0, x, [1, 1, 1], [0, 0, 0], 0
    else:
        kind = 1 if mask.dtype == torch.bool else 2
        mask_arg, sizes, strides, col_stride = _mask_geometry(x, mask)
    multimax_fwd_kernel[launch.grid](
        x, y, params, mask_arg, n_rows, n_cols, sizes[1], sizes[2],
        strides[0], strides[1], strides[2], col_stride,
        ORDER=order, MASK_KIND=kind, BLOCK_N=launch.block_n, ROWS=launch.rows_per_program,
        SINGLE_BLOCK=launch.single_block, num_warps=launch.num_warps,
    )
    return y


def multimax_backward(
    grad_y: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    ranges: torch.Tensor,
    ts: torch.Tensor,
    max_single_block: int = BACKWARD_MAX_SINGLE_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d_ranges, d_ts) for y = multimax(x, ranges, ts, mask); masked entries have y == 0."""
    grad_y = grad_y.to(x.dtype).contiguous()
    y = y.to(x.dtype).contiguous()
    x = x.contiguous()
    dx = torch.empty_like(x)
    params, order = _packed_params(x, ranges, ts)
    n_sums = 4 * order
    if x.numel() == 0:
        return dx, torch.zeros_like(ranges), torch.zeros_like(ts)
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols
    launch = row_launch(n_rows, n_cols, max_single_block)
    partial = torch.empty(
        (launch.programs, launch.n_col_blocks, max(n_sums, 1)), device=x.device, dtype=torch.float32
    )
    multimax_bwd_kernel[launch.grid](
        grad_y, y, x, dx, params, partial, n_rows, n_cols, launch.n_col_blocks,
        ORDER=order, BLOCK_N=launch.block_n, ROWS=launch.rows_per_program,
        SINGLE_BLOCK=launch.single_block, num_warps=launch.num_warps,
    )
    # Fixed-shape float64 sum of per-tile partials: deterministic (no atomics).
    sums = partial[..., :n_sums].to(torch.float64).sum(dim=(0, 1)).view(max(order, 0), 4)
    t = ts.detach().to(device=x.device, dtype=torch.float64).view(max(order, 0), 2)
    d_ts = torch.stack([sums[:, 0], sums[:, 1]], dim=1).reshape(-1)
    d_ranges = torch.stack([t[:, 0] * sums[:, 2], -t[:, 1] * sums[:, 3]], dim=1).reshape(-1)
    return dx, d_ranges.to(device=ranges.device, dtype=ranges.dtype), d_ts.to(device=ts.device, dtype=ts.dtype)


def make_kernel():
    """The `MultiMaxKernel` the registry hands CUDA tensors to."""
    from mmserve.ops.kernels import MultiMaxKernel

    return MultiMaxKernel(name="triton", forward=multimax_forward, backward=multimax_backward, supports=supports)
