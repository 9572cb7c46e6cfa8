"""Scaled dot-product attention with MultiMax (or SoftMax) as the normaliser.

Mask convention everywhere in mmserve: boolean, True = masked out (the opposite of
`F.scaled_dot_product_attention`'s boolean mask, which marks entries to keep), broadcastable to
[batch, heads, queries, keys]. Fully masked query rows produce zeros, never NaN.

`impl` selects how MultiMax attention runs:
- "eager": scores = q k^T * scale, then the `mmserve::multimax` op (fused per device), then @ v.
  The only path that can return the attention weights (used by attention rollout).
- "auto": the best path registered for the device (see `register_attention_impl`), else "eager".
Registered implementations: CPU "fused" (`mmserve.ops.cpu_kernel`: C++ attention for float32
inference, scores kept in cache; it defers to "eager" for training and while tracing/exporting) and
"flex" (`mmserve.ops.flex`: flex_attention with the modulator as score_mod; picked by "auto" on CUDA,
by name only on CPU), both registered from `mmserve.ops.__init__` without importing anything heavy.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .functional import multimax

__all__ = [
    "multimax_attention",
    "softmax_attention",
    "causal_mask",
    "combine_masks",
    "register_attention_impl",
    "AttentionImpl",
]

AttentionImpl = Callable[..., torch.Tensor]
"""fn(q, k, v, ranges, ts, mask, is_causal, scale) -> out; registered per device type."""

_attention_impls: dict[str, list[tuple[str, AttentionImpl, Callable[[torch.Tensor], bool]]]] = {}


def register_attention_impl(
    device_type: str,
    name: str,
    fn: AttentionImpl,
    supports: Callable[[torch.Tensor], bool] = lambda q: True,
) -> None:
    """Register a fused MultiMax attention for `device_type`, picked by impl="auto" (or by name)."""
    impls = _attention_impls.setdefault(device_type, [])
    if not any(existing == name for existing, _, _ in impls):
        impls.append((name, fn, supports))


def causal_mask(q_len: int, k_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[q_len, k_len] bool mask, True above the diagonal aligned to the last key (works with a KV cache)."""
    offset = k_len - q_len
    rows = torch.arange(q_len, device=device).unsqueeze(1)
    cols = torch.arange(k_len, device=device).unsqueeze(0)
    return cols > rows + offset


def combine_masks(*masks: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Logical OR of the given boolean masks (None entries ignored); None when there are none."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = out | m
    return out


def _scores(q: torch.Tensor, k: torch.Tensor, scale: Optional[float]) -> torch.Tensor:
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return (q @ k.transpose(-2, -1)) * scale


def _full_mask(q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor], is_causal: bool):
    causal = causal_mask(q.shape[-2], k.shape[-2], q.device) if is_causal else None
    return combine_masks(mask, causal)


def multimax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ranges: torch.Tensor,
    ts: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    impl: str = "auto",
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(seglu(q k^T * scale) masked) @ v, q/k/v shaped [..., seq, head_dim].

    With return_weights=True the eager path runs and (out, weights) is returned.
    """
    if not return_weights and impl != "eager":
        for name, fn, supports in _attention_impls.get(q.device.type, []):
            if (impl == "auto" and supports(q)) or impl == name:
                return fn(q, k, v, ranges, ts, mask, is_causal, scale)
        if impl not in ("auto", "eager"):
            raise ValueError(f"attention impl {impl!r} is not registered for device {q.device.type!r}")
    weights = multimax(_scores(q, k, scale), ranges, ts, dim=-1, mask=_full_mask(q, k, mask, is_causal))
    out = weights @ v
    return (out, weights) if return_weights else out


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The SoftMax baseline: F.scaled_dot_product_attention (eager softmax when weights are wanted)."""
    full = _full_mask(q, k, mask, is_causal)
    if return_weights:
        scores = _scores(q, k, scale)
        if full is not None:
            scores = scores.masked_fill(full, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
        return weights @ v, weights
    if full is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=~full, scale=scale)
    fully_masked = full.all(dim=-1, keepdim=True)
    return out.masked_fill(fully_masked, 0.0)
