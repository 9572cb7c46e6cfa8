"""Transformer encoder-decoder with MultiMax attention and a MultiMax output layer.

One family with switches, so a model trained here and one imported from fairseq (issue 9) share the
translator code, its export and its serving: norm placement per stack (pre-norm with final norms, as
trained here, or fairseq's default post-norm), positions (interleaved sinusoids, fairseq's
concatenated sin|cos table, or learned; `position_offset` is fairseq's padding offset: the first real
token sits at row padding_idx + 1), embedding scale, `layernorm_embedding`, ReLU/GELU, and which
attention modules are MultiMax (the official fairseq code modulates some attention modules and not
others: see `mmserve.checkpoints.fairseq`).

MultiMax (softmax(seglu(x))) normalises the scores of every attention module: encoder self-attention,
causal decoder self-attention and encoder-decoder cross-attention, each module owning its own
`ranges`/`ts` (via `mmserve.models.layers.Normalizer`, as in the ViT). The output layer has the
model-level pair: `logits = seglu(output_projection(h))`, so `softmax(logits)` = multimax of the
projection and `log_softmax(logits)` are MultiMax log-probabilities (what decoding scores with).

The decoder is driven through a STEP API that the ONNX runner mirrors exactly, so greedy/beam search
and the server's continuous batching run unchanged on either backend (see CONTRACTS.md):

    encode(src_ids [B,S], src_pad_mask [B,S])                     -> memory [B,S,D]
    cross_kv(memory)                                              -> [(k, v) per layer], [B,H,S,Dh]
    decode_step(tokens [B,T], positions [B,T], self_kv [(k, v)] [B,H,P,Dh] or None,
                self_pad_mask [B,P+T], cross_kv, src_pad_mask [B,S])
                                                                  -> (logits [B,T,V], self_kv [B,H,P+T,Dh])
    reorder_kv(kv, index)                                         -> kv with rows `index` (beam reordering)

Masks are bool, True = masked (padding). Positions are per row and per token, so rows with different
amounts of real history (left-padded caches) share one batch. A causal mask among the T new tokens is
applied inside `decode_step`; the P cached slots are all in the past of every new token.

`forward` is the teacher-forced training path and is literally encode + cross_kv + one decode_step
with an empty cache, so training and incremental decoding cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mmserve.ops import multimax_parameters, seglu
from mmserve.ops.attention import causal_mask

from .layers import AttentionFn, Normalizer

__all__ = [
    "TranslatorConfig",
    "MultiMaxTranslator",
    "KVCache",
    "sinusoidal_positions",
]

KVCache = list[tuple[torch.Tensor, torch.Tensor]]
"""One (key, value) pair per decoder layer, each [batch, heads, length, head_dim]."""


class TranslatorConfig(BaseModel):
    """Architecture of a MultiMax encoder-decoder; serialised as `architecture` in config.json."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["seq2seq"] = "seq2seq"
    src_vocab_size: int = Field(ge=4, description="source vocabulary (equal to tgt for a shared vocabulary)")
    tgt_vocab_size: int = Field(ge=4)
    d_model: int = Field(256, ge=8)
    num_heads: int = Field(4, ge=1)
    encoder_layers: int = Field(3, ge=1)
    decoder_layers: int = Field(3, ge=1)
    ffn_dim: int = Field(1024, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    positions: Literal["sinusoidal", "learned", "fairseq-sinusoidal"] = Field(
        "sinusoidal",
        description="'sinusoidal': sin/cos interleaved (Vaswani); 'fairseq-sinusoidal': fairseq's table "
        "(sin half then cos half, log(10000)/(half-1) frequencies); 'learned': an embedding table",
    )
    position_offset: int = Field(
        0, ge=0, description="added to every position (fairseq: padding_idx + 1 = 2)"
    )
    max_positions: int = Field(64, ge=2, description="most tokens per source / target sequence")
    encoder_norm: Literal["pre", "post"] = Field(
        "pre", description="'pre': x + f(norm(x)) and a final norm; 'post': norm(x + f(x)), no final norm"
    )
    decoder_norm: Literal["pre", "post"] = "pre"
    layernorm_embedding: bool = Field(False, description="LayerNorm after token + position embeddings")
    activation: Literal["relu", "gelu"] = "relu"
    decoder_ffn_dim: Optional[int] = Field(None, ge=1, description="decoder FFN size (default: ffn_dim)")
    scale_embedding: bool = Field(True, description="multiply token embeddings by sqrt(d_model)")
    tie_embeddings: Literal["none", "decoder", "all"] = Field(
        "decoder",
        description="'decoder': decoder input embedding = output projection; "
        "'all': the encoder's embedding too (needs a shared vocabulary)",
    )
    attention_fn: AttentionFn = "multimax"
    encoder_attention_fn: Optional[AttentionFn] = Field(None, description="default: attention_fn")
    decoder_self_attention_fn: Optional[AttentionFn] = Field(None, description="default: attention_fn")
    cross_attention_fn: Optional[AttentionFn] = Field(None, description="default: attention_fn")
    output_fn: Optional[AttentionFn] = None
    multimax_order: int = Field(2, ge=0)
    layer_norm_eps: float = Field(1e-5, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "TranslatorConfig":
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.positions != "learned" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.tie_embeddings == "all" and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"tie_embeddings='all' needs a shared vocabulary, got src {self.src_vocab_size} "
                f"and tgt {self.tgt_vocab_size}"
            )
        return self

    @property
    def head_fn(self) -> AttentionFn:
        """Normaliser of the output layer; follows the attention's unless set."""
        return self.output_fn or self.attention_fn

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def encoder_fn(self) -> AttentionFn:
        return self.encoder_attention_fn or self.attention_fn

    @property
    def decoder_self_fn(self) -> AttentionFn:
        return self.decoder_self_attention_fn or self.attention_fn

    @property
    def cross_fn(self) -> AttentionFn:
        return self.cross_attention_fn or self.attention_fn

    @property
    def uses_multimax(self) -> bool:
        """Whether any module (attention or output layer) normalises with MultiMax."""
        fns = (self.encoder_fn, self.decoder_self_fn, self.cross_fn, self.head_fn)
        return "multimax" in fns


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """[num_positions, dim] table of Vaswani et al. (sin on even channels, cos on odd ones)."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


def fairseq_sinusoidal_positions(num_positions: int, dim: int, padding_idx: Optional[int]) -> torch.Tensor:
    """[num_positions, dim] table in fairseq's layout (`SinusoidalPositionalEmbedding.get_embedding`):
    sines of all frequencies, then cosines, frequencies exp(-i log(10000) / (dim/2 - 1)); the
    padding row is zero. Computed in float64 (fairseq computes in float32: ~1e-7 apart)."""
    half = dim // 2
    step = math.log(10000.0) / (half - 1)
    freq = torch.exp(torch.arange(half, dtype=torch.float64) * -step)
    angles = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1) * freq.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1, dtype=torch.float64)], dim=1)
    if padding_idx is not None and 0 <= padding_idx < num_positions:
        table[padding_idx] = 0
    return table.float()


_ACTIVATIONS = {"relu": torch.relu, "gelu": nn.functional.gelu}


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections, so keys/values can be cached or taken
    from the encoder memory (`project_kv`) independently of the queries. Owns `ranges`/`ts`."""

    def __init__(self, cfg: TranslatorConfig, attention_fn: AttentionFn) -> None:
        super().__init__()
        dim = cfg.d_model
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.normalizer = Normalizer(self, attention_fn, cfg.multimax_order)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, H, L, Dh] of the tokens x [B, L, D]."""
        return self._heads(self.k_proj(x)), self._heads(self.v_proj(x))

    def forward(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Queries from x [B, T, D] attend over k/v [B, H, L, Dh]; mask bool [B, 1, T|1, L], True = masked."""
        batch, length, dim = x.shape
        out = self.normalizer(self._heads(self.q_proj(x)), k, v, mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Module):
    """fc1 -> ReLU|GELU -> dropout -> fc2 (the Transformer-base MLP)."""

    def __init__(self, cfg: TranslatorConfig, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, hidden)
        self.fc2 = nn.Linear(hidden, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation = _ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


def _sublayer(
    x: torch.Tensor, norm: nn.LayerNorm, pre: bool, dropout: nn.Dropout, fn
) -> torch.Tensor:
    """One residual sub-layer: pre-norm x + f(norm(x)), or post-norm norm(x + f(x))."""
    if pre:
        return x + dropout(fn(norm(x)))
    return norm(x + dropout(fn(x)))


class EncoderLayer(nn.Module):
    """Pre-norm: x + self_attn(norm(x)); x + ffn(norm(x)). Post-norm: norm(x + self_attn(x)); norm(x + ffn(x))."""

    def __init__(self, cfg: TranslatorConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.encoder_norm == "pre"
        self.self_attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(cfg, cfg.encoder_fn)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg, cfg.ffn_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def _attend(self, h: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        k, v = self.self_attn.project_kv(h)
        return self.self_attn(h, k, v, mask)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = _sublayer(x, self.self_attn_norm, self.pre_norm, self.dropout, lambda h: self._attend(h, mask))
        return _sublayer(x, self.ffn_norm, self.pre_norm, self.dropout, self.ffn)


class DecoderLayer(nn.Module):
    """Self-attention (causal, cached), cross-attention over the memory, FFN; each a pre- or post-norm
    residual sub-layer."""

    def __init__(self, cfg: TranslatorConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.decoder_norm == "pre"
        self.self_attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(cfg, cfg.decoder_self_fn)
        self.cross_attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.cross_attn = Attention(cfg, cfg.cross_fn)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg, cfg.decoder_ffn_dim or cfg.ffn_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        past: Optional[tuple[torch.Tensor, torch.Tensor]],
        self_mask: torch.Tensor,
        cross: tuple[torch.Tensor, torch.Tensor],
        cross_mask: Optional[torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        cache: list[tuple[torch.Tensor, torch.Tensor]] = []

        def attend_self(h: torch.Tensor) -> torch.Tensor:
            k, v = self.self_attn.project_kv(h)
            if past is not None:
                k = torch.cat([past[0], k], dim=2)
                v = torch.cat([past[1], v], dim=2)
            cache.append((k, v))
            return self.self_attn(h, k, v, self_mask)

        x = _sublayer(x, self.self_attn_norm, self.pre_norm, self.dropout, attend_self)
        x = _sublayer(
            x, self.cross_attn_norm, self.pre_norm, self.dropout,
            lambda h: self.cross_attn(h, cross[0], cross[1], cross_mask),
        )
        x = _sublayer(x, self.ffn_norm, self.pre_norm, self.dropout, self.ffn)
        return x, cache[0]


class _Embedding(nn.Module):
    """Token embedding * sqrt(D) (optional) + position embedding (row position + offset), optional
    LayerNorm, then dropout (fairseq's TransformerEncoder/Decoder.forward_embedding order)."""

    def __init__(self, cfg: TranslatorConfig, vocab_size: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, cfg.d_model)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.offset = cfg.position_offset
        rows = cfg.max_positions + cfg.position_offset
        if cfg.positions == "learned":
            self.embed_positions = nn.Embedding(rows, cfg.d_model)
        else:
            # Not a parameter and not saved: a pure function of (max_positions, d_model).
            table = (
                sinusoidal_positions(rows, cfg.d_model)
                if cfg.positions == "sinusoidal"
                else fairseq_sinusoidal_positions(rows, cfg.d_model, cfg.position_offset - 1)
            )
            self.register_buffer("sinusoid", table, persistent=False)
        if cfg.layernorm_embedding:
            self.layernorm_embedding = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids) * self.scale
        if self.offset:
            positions = positions + self.offset
        if hasattr(self, "embed_positions"):
            x = x + self.embed_positions(positions)
        else:
            x = x + self.sinusoid[positions]
        if hasattr(self, "layernorm_embedding"):
            x = self.layernorm_embedding(x)
        return self.dropout(x)


def _final_norm(cfg: TranslatorConfig, placement: str) -> nn.Module:
    """Pre-norm stacks end with a LayerNorm; post-norm ones already normalised their last output."""
    return nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if placement == "pre" else nn.Identity()


class Encoder(nn.Module):
    def __init__(self, cfg: TranslatorConfig) -> None:
        super().__init__()
        self.embed = _Embedding(cfg, cfg.src_vocab_size)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.encoder_layers)])
        self.norm = _final_norm(cfg, cfg.encoder_norm)


class Decoder(nn.Module):
    def __init__(self, cfg: TranslatorConfig) -> None:
        super().__init__()
        self.embed = _Embedding(cfg, cfg.tgt_vocab_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        self.norm = _final_norm(cfg, cfg.decoder_norm)


class MultiMaxTranslator(nn.Module):
    """Encoder-decoder translator; implements the `Seq2SeqStepper` protocol of `mmserve.models.decoding`."""

    def __init__(self, cfg: TranslatorConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.output_projection = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        if cfg.head_fn == "multimax":
            self.ranges, self.ts = multimax_parameters(cfg.multimax_order)
        self._init_weights()
        if cfg.tie_embeddings in ("decoder", "all"):
            self.output_projection.weight = self.decoder.embed.embed_tokens.weight
        if cfg.tie_embeddings == "all":
            self.encoder.embed.embed_tokens.weight = self.decoder.embed.embed_tokens.weight

    def _init_weights(self) -> None:
        # fairseq's Transformer recipe: Xavier-uniform projections, N(0, D^-1/2) embeddings (so that
        # embedding * sqrt(D) has unit scale and a tied output projection gives unit-scale logits).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.config.d_model**-0.5)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def set_attention_impl(self, impl: str) -> None:
        """Choose the MultiMax attention path ("auto", "eager", or a registered fused one)."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.normalizer.impl = impl

    # ---------------------------------------------------------------------------------- step API

    def encode(self, src_ids: torch.Tensor, src_pad_mask: torch.Tensor) -> torch.Tensor:
        """Encoder memory [B, S, D]. Sources are right-padded: real tokens sit at positions 0..len-1."""
        positions = torch.arange(src_ids.shape[1], device=src_ids.device).unsqueeze(0)
        x = self.encoder.embed(src_ids, positions)
        mask = src_pad_mask[:, None, None, :]
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.encoder.norm(x)

    def cross_kv(self, memory: torch.Tensor) -> KVCache:
        """Each decoder layer's cross-attention keys and values of the memory, computed once per source."""
        return [layer.cross_attn.project_kv(memory) for layer in self.decoder.layers]

    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        self_kv: Optional[KVCache],
        self_pad_mask: torch.Tensor,
        cross_kv: KVCache,
        src_pad_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, KVCache]:
        """Run T new tokens per row on top of a P-slot cache; returns modulated logits and the grown cache.

        self_pad_mask [B, P+T] marks cache slots (and new tokens) that are padding: never attended to.
        """
        new_len = tokens.shape[1]
        total = self_pad_mask.shape[1]
        causal = causal_mask(new_len, total, tokens.device)  # [T, P+T], new tokens see all P past slots
        self_mask = self_pad_mask[:, None, None, :] | causal[None, None]
        cross_mask = src_pad_mask[:, None, None, :]
        x = self.decoder.embed(tokens, positions)
        new_kv: KVCache = []
        for i, layer in enumerate(self.decoder.layers):
            past = self_kv[i] if self_kv else None
            x, kv = layer(x, past, self_mask, cross_kv[i], cross_mask)
            new_kv.append(kv)
        return self.logits(self.decoder.norm(x)), new_kv

    @staticmethod
    def reorder_kv(kv: KVCache, index: torch.Tensor) -> KVCache:
        """Rows `index` of every cache tensor (beam reordering, batch expansion, dropping finished rows)."""
        return [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]

    # --------------------------------------------------------------------------- output layer

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Modulated logits seglu(output_projection(h)); log_softmax of them = MultiMax log-probs."""
        scores = self.output_projection(hidden)
        if self.config.head_fn == "multimax":
            return seglu(scores, self.ranges, self.ts)
        return scores

    # ------------------------------------------------------------------------------ training

    def forward(
        self,
        src_ids: torch.Tensor,
        src_pad_mask: torch.Tensor,
        tgt_in_ids: torch.Tensor,
        tgt_pad_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Teacher-forced modulated logits [B, T, V] for right-padded targets (BOS + tokens)."""
        memory = self.encode(src_ids, src_pad_mask)
        batch, length = tgt_in_ids.shape
        positions = torch.arange(length, device=tgt_in_ids.device).unsqueeze(0).expand(batch, length)
        if tgt_pad_mask is None:
            tgt_pad_mask = torch.zeros(batch, length, dtype=torch.bool, device=tgt_in_ids.device)
        logits, _ = self.decode_step(
            tgt_in_ids, positions, None, tgt_pad_mask, self.cross_kv(memory), src_pad_mask
        )
        return logits
