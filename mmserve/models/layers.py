"""Building blocks shared by the model families: attention with a switchable normaliser, MLP, drop-path."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from mmserve.ops import multimax_attention, multimax_parameters, softmax_attention

__all__ = ["AttentionFn", "Normalizer", "Mlp", "DropPath", "SelfAttention"]

AttentionFn = Literal["multimax", "softmax"]


class Normalizer(nn.Module):
    """Owns the MultiMax parameters of one attention module (or none, for SoftMax) and runs attention.

    Kept separate from the projections so that every attention flavour (ViT self-attention,
    encoder-decoder cross-attention, KV-cached decoding) normalises scores in exactly one place.
    Parameters are registered on the *parent* module (official layout: `attn.ranges`, `attn.ts`).
    """

    def __init__(self, parent: nn.Module, attention_fn: AttentionFn, order: int) -> None:
        super().__init__()
        if attention_fn not in ("multimax", "softmax"):
            raise ValueError(f"attention_fn must be 'multimax' or 'softmax', got {attention_fn!r}")
        self.attention_fn = attention_fn
        self.impl = "auto"
        if attention_fn == "multimax":
            parent.ranges, parent.ts = multimax_parameters(order)
        # A plain reference to the parent (not a submodule) so it is not registered twice.
        object.__setattr__(self, "_parent", parent)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        return_weights: bool = False,
    ):
        if self.attention_fn == "softmax":
            return softmax_attention(q, k, v, mask=mask, is_causal=is_causal, return_weights=return_weights)
        parent = self._parent
        return multimax_attention(
            q,
            k,
            v,
            parent.ranges,
            parent.ts,
            mask=mask,
            is_causal=is_causal,
            impl=self.impl,
            return_weights=return_weights,
        )


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval time)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (timm layout: `mlp.fc1`, `mlp.fc2`)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SelfAttention(nn.Module):
    """ViT self-attention in the official layout: `qkv` (no bias by default), `proj`, `ranges`, `ts`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention_fn: AttentionFn = "multimax",
        order: int = 2,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.normalizer = Normalizer(self, attention_fn, order)
        if attn_drop:
            raise ValueError("attention dropout is not supported (fused attention paths cannot apply it)")

    def forward(
        self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, return_weights: bool = False
    ):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        result = self.normalizer(q, k, v, mask=mask, return_weights=return_weights)
        out, weights = result if return_weights else (result, None)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))
        return (out, weights) if return_weights else out
