"""MultiMax attention with `torch.nn.attention.flex_attention`: the score matrix is never written.

flex_attention computes `score = q.k * scale` tile by tile and hands each score to a `score_mod`;
MultiMax's modulator is exactly such a pointwise function, so

    out = flex_attention(q, k, v, score_mod=seglu, block_mask=<padding | causal>, scale=scale)

is softmax(seglu(q k^T * scale) masked) @ v with the masks applied *after* the modulator (masked
scores are dropped by the block mask, never fed to the polynomial). `ranges` and `ts` are captured
by the score_mod closure, so autograd reaches them (flex_attention supports captured tensors that
require grad).

Masks: boolean, True = masked out, broadcastable to [B, H, Tq, Tk] (mmserve's convention), turned
into a `mask_mod` that reads the mask tensor, plus the causal rule aligned to the last key (the same
as `mmserve.ops.attention.causal_mask`). A floating mask is added to the modulated score instead.
Semantics of fully masked query rows (decided for every MultiMax path in mmserve): their output is
0, and no gradient flows from them; flex_attention would return 0 for them too, and we force it
explicitly so the rule does not depend on the backend.

On CUDA, `mmserve.ops.accelerated` registers this (compiled) as attention impl "flex", which
`impl="auto"` picks. On CPU it is registered under the name "flex" but not picked by "auto": there the
eager path (matmul + fused C++ MultiMax + matmul) is faster (see benchmarks/bench_attention.py).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import torch

from .reference import seglu_terms

__all__ = ["multimax_score_mod", "multimax_flex_attention", "flex_available"]


def flex_available() -> bool:
    """Whether this torch has flex_attention (torch >= 2.5)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def multimax_score_mod(ranges: torch.Tensor, ts: torch.Tensor) -> Callable:
    """score_mod(score, b, h, q_idx, kv_idx) = seglu(score) with the captured learned scalars."""
    order = ranges.numel() // 2

    def score_mod(score, b, h, q_idx, kv_idx):
        return seglu_terms(score, ranges, ts, order)

    return score_mod


def _with_additive_mask(score_mod: Callable, mask: torch.Tensor) -> Callable:
    def masked_score_mod(score, b, h, q_idx, kv_idx):
        return score_mod(score, b, h, q_idx, kv_idx) + mask[b, h, q_idx, kv_idx]

    return masked_score_mod


def _as_4d(mask: torch.Tensor) -> torch.Tensor:
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    if mask.dim() > 4:
        raise ValueError(f"flex MultiMax attention takes masks of rank <= 4, got {tuple(mask.shape)}")
    return mask


def _block_mask(mask: Optional[torch.Tensor], is_causal: bool, B: int, H: int, Tq: int, Tk: int, device):
    """A BlockMask for a boolean mask (True = masked) and/or the causal rule; None when neither."""
    from torch.nn.attention.flex_attention import create_block_mask

    if mask is None and not is_causal:
        return None
    offset = Tk - Tq
    if mask is not None:
        m = _as_4d(mask)
        mb = B if m.shape[0] != 1 else None
        mh = H if m.shape[1] != 1 else None
        full = m.expand(mb or 1, mh or 1, Tq, Tk)

        def mask_mod(b, h, q_idx, kv_idx):
            keep = ~full[b if mb else 0, h if mh else 0, q_idx, kv_idx]
            if is_causal:
                keep = keep & (kv_idx <= q_idx + offset)
            return keep

        return create_block_mask(mask_mod, mb, mh, Tq, Tk, device=device)

    return _causal_block_mask(Tq, Tk, str(device))


@functools.lru_cache(maxsize=32)
def _causal_block_mask(Tq: int, Tk: int, device: str):
    """Causal-only block masks depend on the sizes alone: built once per (Tq, Tk, device)."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = Tk - Tq

    def causal_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    return create_block_mask(causal_mod, None, None, Tq, Tk, device=device)


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def multimax_flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ranges: torch.Tensor,
    ts: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    compiled: bool = True,
) -> torch.Tensor:
    """softmax(seglu(q k^T * scale) masked) @ v for q/k/v [B, H, T, D] without a score matrix.

    compiled=False runs flex_attention eagerly (which itself materialises scores: for tests and
    checks only; the fast path is the compiled one).
    """
    from torch.nn.attention.flex_attention import flex_attention

    if q.dim() != 4:
        raise ValueError(f"flex MultiMax attention needs [B, H, T, D] tensors, got q of shape {tuple(q.shape)}")
    B, H, Tq, _ = q.shape
    Tk = k.shape[-2]
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    score_mod = multimax_score_mod(ranges.to(device=q.device), ts.to(device=q.device))
    bool_mask = None
    if mask is not None:
        if mask.dtype == torch.bool:
            bool_mask = mask
        elif mask.is_floating_point():
            score_mod = _with_additive_mask(score_mod, _as_4d(mask).expand(B, H, Tq, Tk))
        else:
            raise TypeError(f"attention mask must be bool (True = masked) or floating, got {mask.dtype}")
    block_mask = _block_mask(bool_mask, is_causal, B, H, Tq, Tk, q.device)
    fn = _compiled_flex() if compiled else flex_attention
    out = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    dead = bool_mask if bool_mask is not None else (torch.isneginf(mask) if mask is not None else None)
    if dead is not None:
        # Pin the rule "fully masked rows give 0" (flex_attention does it too) without a host sync:
        # a causal rule alone never empties a row when Tk >= Tq, a mask can.
        from .attention import causal_mask, combine_masks

        full = combine_masks(_as_4d(dead), causal_mask(Tq, Tk, q.device) if is_causal else None)
        out = out.masked_fill(full.all(dim=-1, keepdim=True), 0.0)
    return out
