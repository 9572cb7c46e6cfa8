"""The native CPU translator: a `MultiMaxTranslator` run by C++ (mmserve/ops/cpu_kernel/translator_cpu.cpp).

Why it exists: at the bundled model's size a decoder step on onnxruntime or eager torch is dominated by
running ~290 small graph nodes one by one and by the Python search loop around them (issue 14). The
native translator runs the encoder, the cached decoder steps and the whole greedy / beam search of a
batch in one C++ call on preallocated buffers, as CTranslate2 does, with the same MultiMax row kernel
as the fused attention. Parallelism is across batches (decode workers, like CTranslate2's
`inter_threads`): the call releases the GIL and uses one core.

`NativeTranslator` implements the `Seq2SeqStepper` protocol (so the server's continuous batcher, which
interleaves requests between steps, runs on it) and `search`, which `mmserve.models.decoding` uses
instead of its Python loops when a stepper offers it. Both follow the Python definitions exactly
(same rules, same tie-breaking as far as float ties allow); the tests compare them token for token.

The weights are shared with the torch model (no copy) for as long as the translator lives, float32 on
the CPU only; the model must not be trained while a translator uses it.
"""

from __future__ import annotations

import math
import weakref
from typing import Optional

import torch

from .decoding import Hypothesis, SearchRules
from .seq2seq import Attention, KVCache, MultiMaxTranslator, TranslatorConfig

__all__ = ["NativeTranslator", "NativeTranslatorError", "native_available"]

_EMPTY = torch.zeros(0)


class NativeTranslatorError(RuntimeError):
    """The native translator cannot run this model or on this machine (the message says why)."""


def _ops():
    """The built C++ kernel library's ops (compiled on first use, cached; see `mmserve kernels build`)."""
    from mmserve.ops.cpu_kernel import build

    try:
        build()
    except Exception as exc:  # a missing compiler is reported as the reason, not a traceback
        raise NativeTranslatorError(f"the native translator needs the C++ CPU kernels: {type(exc).__name__}: {exc}") from exc
    if not bool(torch.ops.mmserve_cpu.has_blas()):
        raise NativeTranslatorError("this torch build exports no BLAS sgemm, which the native translator needs")
    return torch.ops.mmserve_cpu


def native_available() -> tuple[bool, Optional[str]]:
    """(whether the native translator can run here, the reason when it cannot)."""
    try:
        _ops()
    except NativeTranslatorError as exc:
        return False, str(exc)
    return True, None


def _attention_weights(attn: Attention) -> list[torch.Tensor]:
    """q, k, v, out projections (weight, bias) then ranges, ts (empty for SoftMax: modulator order 0)."""
    out: list[torch.Tensor] = []
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
        out += [proj.weight, proj.bias]
    if attn.normalizer.attention_fn == "multimax":
        out += [attn.ranges, attn.ts]
    else:
        out += [_EMPTY, _EMPTY]
    return out


def _positions(embed) -> torch.Tensor:
    return embed.embed_positions.weight if hasattr(embed, "embed_positions") else embed.sinusoid


def _norm(norm) -> list[torch.Tensor]:
    return [norm.weight, norm.bias]


def pack(model: MultiMaxTranslator) -> tuple[list[torch.Tensor], list[int], list[float]]:
    """The weight list, int and float settings in the order `translator_create` reads them."""
    cfg: TranslatorConfig = model.config
    enc, dec = model.encoder, model.decoder
    weights = [enc.embed.embed_tokens.weight, dec.embed.embed_tokens.weight, _positions(enc.embed), _positions(dec.embed)]
    if cfg.layernorm_embedding:
        weights += _norm(enc.embed.layernorm_embedding) + _norm(dec.embed.layernorm_embedding)
    if cfg.encoder_norm == "pre":
        weights += _norm(enc.norm)
    if cfg.decoder_norm == "pre":
        weights += _norm(dec.norm)
    for layer in enc.layers:
        weights += _norm(layer.self_attn_norm) + _attention_weights(layer.self_attn) + _norm(layer.ffn_norm)
        weights += [layer.ffn.fc1.weight, layer.ffn.fc1.bias, layer.ffn.fc2.weight, layer.ffn.fc2.bias]
    for layer in dec.layers:
        weights += _norm(layer.self_attn_norm) + _attention_weights(layer.self_attn)
        weights += _norm(layer.cross_attn_norm) + _attention_weights(layer.cross_attn) + _norm(layer.ffn_norm)
        weights += [layer.ffn.fc1.weight, layer.ffn.fc1.bias, layer.ffn.fc2.weight, layer.ffn.fc2.bias]
    weights.append(model.output_projection.weight)
    head = cfg.head_fn == "multimax"
    weights += [model.ranges, model.ts] if head else [_EMPTY, _EMPTY]
    rows = _positions(enc.embed).shape[0]
    if _positions(dec.embed).shape[0] != rows:
        raise NativeTranslatorError("the encoder and decoder position tables differ in length")
    ints = [
        cfg.d_model, cfg.num_heads, cfg.encoder_layers, cfg.decoder_layers, cfg.src_vocab_size, cfg.tgt_vocab_size,
        rows, cfg.position_offset, int(cfg.encoder_norm == "pre"), int(cfg.decoder_norm == "pre"),
        int(cfg.activation == "gelu"), int(cfg.layernorm_embedding), int(head),
    ]
    floats = [math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0, cfg.layer_norm_eps]
    return [w.detach().float().contiguous() for w in weights], ints, floats


class NativeTranslator:
    """A MultiMaxTranslator on the native C++ runtime: the step API plus a whole-batch `search`."""

    device = torch.device("cpu")

    def __init__(self, model: MultiMaxTranslator) -> None:
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise NativeTranslatorError("the native translator runs on the CPU; load the model with device 'cpu'")
        if model.training:
            raise NativeTranslatorError("the native translator is for inference: call model.eval() first")
        self.model = model
        self.config = model.config
        self._ops = _ops()
        weights, ints, floats = pack(model)
        self._handle = int(self._ops.translator_create(weights, ints, floats))
        self._release = weakref.finalize(self, self._ops.translator_release, self._handle)

    def gemm_engines(self) -> str:
        """Which GEMM engine each weight shape runs on (small / large row counts) at torch's current
        thread count, as measured the first time the translator ran at that count: e.g.
        "384x128: mkl-packed/sgemm, ...". For benchmarks and logs."""
        return str(self._ops.translator_gemm_engines(self._handle))

    def close(self) -> None:
        """Free the C++ side now (it is also freed when the translator is garbage-collected)."""
        self._release()

    # ---------------------------------------------------------------------------- step API
    def encode(self, src_ids: torch.Tensor, src_pad_mask: torch.Tensor) -> torch.Tensor:
        return self._ops.translator_encode(self._handle, src_ids, src_pad_mask)

    def cross_kv(self, memory: torch.Tensor) -> KVCache:
        flat = self._ops.translator_cross_kv(self._handle, memory)
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        self_kv: Optional[KVCache],
        self_pad_mask: torch.Tensor,
        cross_kv: KVCache,
        src_pad_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, KVCache]:
        """One new token per row natively; several (teacher forcing, prompts) through the torch model,
        whose cache layout is the same [B, H, P, Dh]."""
        if tokens.shape[1] != 1:
            return self.model.decode_step(tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask)
        flat_self = [t for pair in self_kv for t in pair] if self_kv else []
        flat_cross = [t for pair in cross_kv for t in pair]
        logits, flat = self._ops.translator_decode_step(
            self._handle, tokens, positions, flat_self, self_pad_mask, flat_cross, src_pad_mask
        )
        return logits, [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    @staticmethod
    def reorder_kv(kv: KVCache, index: torch.Tensor) -> KVCache:
        """Rows `index`, keeping the [B, L, H, Dh] storage the C++ side reads without a copy."""
        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).index_select(0, index).transpose(1, 2)

        return [(rows(k), rows(v)) for k, v in kv]

    # ---------------------------------------------------------------------------- whole search
    def search(
        self,
        src_ids: torch.Tensor,
        src_pad_mask: torch.Tensor,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        max_length: int,
        beam_size: int,
        alpha: float,
        n_best: int,
        rules: SearchRules,
    ) -> list[list[Hypothesis]]:
        """Greedy (beam_size 1) or beam search of a batch in one native call; per row the n_best best."""
        tokens, lengths, scores = self._ops.translator_search(
            self._handle, src_ids, src_pad_mask, bos_id, eos_id, pad_id, max_length, beam_size, float(alpha),
            n_best, rules.style == "fairseq", int(rules.min_length),
            -1 if rules.unk_id is None else int(rules.unk_id), float(rules.unk_penalty),
        )
        out: list[list[Hypothesis]] = []
        for row_tokens, row_lengths, row_scores in zip(tokens.tolist(), lengths.tolist(), scores.tolist()):
            out.append([
                Hypothesis(toks[:length], score)
                for toks, length, score in zip(row_tokens, row_lengths, row_scores)
                if length >= 0
            ])
        return out
