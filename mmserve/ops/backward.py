"""Closed-form MultiMax backward in plain PyTorch.

The custom op needs an explicit backward (torch.library ops are opaque to autograd). This is the
portable one; fused kernels register faster ones per device. Derivation, with z = seglu(x) and
y = softmax(z):

    dz = y * (g - sum(g * y))                          (softmax backward; masked entries have y = 0)
    b_n = relu(r[2n-2] - x),   d_n = relu(x - r[2n-1])
    dx        = dz * (1 - sum_n n*ts[2n-2]*b_n^(n-1)*[b_n>0] + sum_n n*ts[2n-1]*d_n^(n-1)*[d_n>0])
    dts[2n-2] = sum(dz * b_n^n),           dts[2n-1] = sum(dz * d_n^n)
    dr[2n-2]  = sum(dz * n*ts[2n-2]*b_n^(n-1)*[b_n>0])
    dr[2n-1]  = -sum(dz * n*ts[2n-1]*d_n^(n-1)*[d_n>0])

The indicator [b>0] matches autograd's relu'(0) = 0 at the kink.
"""

from __future__ import annotations

import torch

from .reference import check_params, compute_dtype

__all__ = ["multimax_backward_reference", "softmax_grad"]


def softmax_grad(grad_y: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    """Gradient of softmax with respect to its input, given the output y and upstream grad_y."""
    return y * (grad_y - (grad_y * y).sum(dim=dim, keepdim=True))


def _power_and_slope(base: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """base**n and d(base**n)/d(base) for base = relu(...) >= 0, with slope 0 where base == 0."""
    if n == 1:
        return base, (base > 0).to(base.dtype)
    return base**n, n * base ** (n - 1)


def multimax_backward_reference(
    grad_y: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    ranges: torch.Tensor,
    ts: torch.Tensor,
    dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (dx, d_ranges, d_ts) for y = multimax(x, ranges, ts, dim, mask).

    The mask needs no input here: masked entries have y == 0, so their dz is 0.
    """
    order = check_params(ranges, ts)
    dtype = compute_dtype(x.dtype)
    xc = x.to(dtype)
    r = ranges.to(device=x.device, dtype=dtype)
    t = ts.to(device=x.device, dtype=dtype)
    dz = softmax_grad(grad_y.to(dtype), y.to(dtype), dim)

    slope = torch.ones_like(xc)
    d_ranges = torch.empty(2 * order, dtype=dtype, device=x.device)
    d_ts = torch.empty(2 * order, dtype=dtype, device=x.device)
    for n in range(1, order + 1):
        below, below_slope = _power_and_slope(torch.relu(r[2 * n - 2] - xc), n)
        above, above_slope = _power_and_slope(torch.relu(xc - r[2 * n - 1]), n)
        d_ts[2 * n - 2] = (dz * below).sum()
        d_ts[2 * n - 1] = (dz * above).sum()
        d_ranges[2 * n - 2] = t[2 * n - 2] * (dz * below_slope).sum()
        d_ranges[2 * n - 1] = -t[2 * n - 1] * (dz * above_slope).sum()
        slope = slope - t[2 * n - 2] * below_slope + t[2 * n - 1] * above_slope
    dx = (dz * slope).to(x.dtype)
    return dx, d_ranges.to(ranges.dtype), d_ts.to(ts.dtype)
