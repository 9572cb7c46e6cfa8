"""DeiT-style Vision Transformer with MultiMax, in the layout of the authors' `VisionTransformer`.

No class token; learned `pos_embed` [1, num_patches, D]; pre-norm blocks; final `norm`, mean over
tokens, `head`, then the model-level modulator (`ranges`, `ts`) on the logits. The state dict keys
are the official ones, so official checkpoints load without renaming (see checkpoints/official.py).

`forward` returns the *modulated* logits (what the official model outputs and cross-entropy
consumes); `predict_proba` returns multimax(head(features)) = softmax(forward(x)).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mmserve.ops import multimax, multimax_parameters, seglu

from .layers import AttentionFn, DropPath, Mlp, SelfAttention

__all__ = ["ViTConfig", "MultiMaxViT", "VIT_PRESETS"]


class ViTConfig(BaseModel):
    """Architecture of a MultiMax ViT; serialised as `architecture` in config.json."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["vit"] = "vit"
    img_size: int = Field(224, ge=1)
    patch_size: int = Field(16, ge=1)
    in_chans: int = Field(3, ge=1)
    num_classes: int = Field(1000, ge=1)
    embed_dim: int = Field(384, ge=1)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(6, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    qkv_bias: bool = False
    layer_norm_eps: float = Field(1e-6, gt=0)
    attention_fn: AttentionFn = "multimax"
    output_fn: Optional[AttentionFn] = None
    multimax_order: int = Field(2, ge=0)
    drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "ViTConfig":
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        return self

    @property
    def head_fn(self) -> AttentionFn:
        """Normaliser of the output layer; follows the attention's unless set."""
        return self.output_fn or self.attention_fn

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


VIT_PRESETS: dict[str, dict[str, object]] = {
    "deit-tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "deit-small": dict(embed_dim=384, depth=12, num_heads=6),
    "deit-base": dict(embed_dim=768, depth=12, num_heads=12),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with a strided convolution (`patch_embed.proj`)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected images of {self.img_size}x{self.img_size}, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, cfg: ViTConfig, drop_path: float) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = SelfAttention(
            dim, cfg.num_heads, cfg.attention_fn, cfg.multimax_order, cfg.qkv_bias, proj_drop=cfg.drop_rate
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), drop=cfg.drop_rate)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        if return_weights:
            attn_out, weights = self.attn(self.norm1(x), return_weights=True)
        else:
            attn_out, weights = self.attn(self.norm1(x)), None
        x = x + self.drop_path(attn_out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, weights) if return_weights else x


class MultiMaxViT(nn.Module):
    """Vision Transformer with MultiMax attention and a MultiMax output layer."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList([Block(cfg, rate) for rate in rates])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        if cfg.head_fn == "multimax":
            self.ranges, self.ts = multimax_parameters(cfg.multimax_order)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def set_attention_impl(self, impl: str) -> None:
        """Choose the MultiMax attention path ("auto", "eager", or a registered fused one)."""
        for block in self.blocks:
            block.attn.normalizer.impl = impl

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Token features after the final norm, [batch, num_patches, embed_dim]."""
        x = self.pos_drop(self.patch_embed(pixel_values) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def head_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling then the linear head: the raw scores before the output modulator."""
        return self.head(features.mean(dim=1))

    def modulate(self, scores: torch.Tensor) -> torch.Tensor:
        """The output modulator seglu(scores): the modulated logits (identity for a SoftMax head)."""
        if self.config.head_fn == "multimax":
            return seglu(scores, self.ranges, self.ts)
        return scores

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The modulated logits seglu(head(pool(features)))."""
        return self.modulate(self.head_scores(features))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(pixel_values))

    def normalize_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Class probabilities from raw head scores: one MultiMax op (softmax for a SoftMax model)."""
        if self.config.head_fn == "multimax":
            return multimax(scores, self.ranges, self.ts, dim=-1)
        return torch.softmax(scores, dim=-1)

    def classify(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs, logits): MultiMax probabilities and the modulated logits, from one forward pass."""
        scores = self.head_scores(self.forward_features(pixel_values))
        return self.normalize_scores(scores), self.modulate(scores)

    def predict_proba(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Class probabilities multimax(head(features))."""
        return self.classify(pixel_values)[0]

    def forward_with_attention(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Modulated logits and each block's attention weights [batch, heads, tokens, tokens]."""
        x = self.pos_drop(self.patch_embed(pixel_values) + self.pos_embed)
        weights = []
        for block in self.blocks:
            x, w = block(x, return_weights=True)
            weights.append(w)
        return self.forward_head(self.norm(x)), weights
