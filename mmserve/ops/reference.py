"""Plain-PyTorch MultiMax, written straight from the formula in DESIGN.md.

This is the path every fused kernel is tested against and the fallback when no fused kernel is
available. It favours obvious correctness over speed: each term of the modulator is one line.
Autograd flows through it natively, so it also serves as the gradient reference.
"""

from __future__ import annotations

import torch

__all__ = [
    "compute_dtype",
    "check_params",
    "seglu_reference",
    "seglu_terms",
    "apply_mask",
    "masked_softmax",
    "multimax_reference",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype MultiMax computes in: float64 stays float64, everything else runs in float32.

    Half types are upcast because the quadratic term overflows float16 for |x| above ~250.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_params(ranges: torch.Tensor, ts: torch.Tensor) -> int:
    """Validate the modulator's parameters and return the order N (ranges and ts hold 2N scalars)."""
    if ranges.dim() != 1 or ts.dim() != 1:
        raise ValueError(f"ranges and ts must be 1-D, got shapes {tuple(ranges.shape)} and {tuple(ts.shape)}")
    if ranges.numel() != ts.numel():
        raise ValueError(f"ranges and ts must have the same length, got {ranges.numel()} and {ts.numel()}")
    if ranges.numel() % 2:
        raise ValueError(f"ranges and ts must hold 2N scalars (one b and one d term per order), got {ranges.numel()}")
    return ranges.numel() // 2


def seglu_reference(x: torch.Tensor, ranges: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """seglu(x) = x + sum_n ts[2n-2]*relu(ranges[2n-2]-x)**n + ts[2n-1]*relu(x-ranges[2n-1])**n.

    Computed in float32 (float64 for float64 input) and returned in that compute dtype.
    """
    order = check_params(ranges, ts)
    dtype = compute_dtype(x.dtype)
    x = x.to(dtype)
    return seglu_terms(x, ranges.to(device=x.device, dtype=dtype), ts.to(device=x.device, dtype=dtype), order)


def seglu_terms(x: torch.Tensor, ranges: torch.Tensor, ts: torch.Tensor, order: int) -> torch.Tensor:
    """The modulator's formula on tensors as given (no checks, no casts): shared by `seglu_reference`
    and the flex_attention `score_mod`, which applies it to one traced score at a time."""
    out = x
    for n in range(1, order + 1):
        below = torch.relu(ranges[2 * n - 2] - x)
        above = torch.relu(x - ranges[2 * n - 1])
        if n > 1:
            below = below**n
            above = above**n
        out = out + ts[2 * n - 2] * below + ts[2 * n - 1] * above
    return out


def apply_mask(z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Apply a mask to modulated scores: boolean (True = masked) or additive (added, -inf = masked).

    Masks are applied *after* the modulator, as in the official code: adding -inf first would feed
    -inf into the polynomial terms and produce NaN.
    """
    if mask is None:
        return z
    if mask.dtype == torch.bool:
        return z.masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"mask must be bool or floating point, got {mask.dtype}")
    return z + mask.to(z.dtype)


def masked_softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    """SoftMax that gives exactly 0 for -inf entries and an all-zero row for a fully masked row."""
    row_max = z.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(z - row_max)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def multimax_reference(
    x: torch.Tensor,
    ranges: torch.Tensor,
    ts: torch.Tensor,
    dim: int = -1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(seglu(x)) along `dim`, masks applied after the modulator; output in x's dtype."""
    z = apply_mask(seglu_reference(x, ranges, ts), mask)
    if z.shape != x.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to input {tuple(x.shape)}")
    return masked_softmax(z, dim).to(x.dtype)
