"""Test helpers for fairseq-trained translators, written from fairseq 0.12's source, NOT from mmserve's code.

- `make_fairseq_checkpoint`: a checkpoint laid out and pickled as fairseq 0.12's `save_checkpoint`
  writes it (`args`/`cfg`/`model`/`criterion`/`optimizer_history`/`task_state`/`extra_state`/
  `last_optimizer_state`; the model settings an argparse Namespace under cfg["model"], or, for the
  omegaconf-style variant, a nested plain dict as `OmegaConf.to_container` leaves a dataclass config),
  with the official MultiMax keys and fairseq 0.12.2's unused BetterTransformer copies.
- `ReferenceTranslator`: a float64 re-implementation of fairseq's TransformerModel forward with the
  official MultiMax code (`SeLU` on the raw scores before masks, only where the official branch runs)
  and of `SequenceGenerator`'s beam-1 loop (pad banned, unk penalty, min_len, EOS forced at max_len).
  It recomputes the whole prefix at every step (no cache), so it shares nothing with the cached
  step API it checks.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

PAD, EOS, UNK = 1, 2, 3


def iwslt_args(**overrides) -> argparse.Namespace:
    """transformer_iwslt_de_en's settings after base_architecture, shrunk for tests."""
    args = dict(
        arch="transformer_iwslt_de_en", encoder_embed_dim=16, encoder_ffn_embed_dim=24, encoder_layers=2,
        encoder_attention_heads=4, decoder_embed_dim=16, decoder_ffn_embed_dim=24, decoder_layers=2,
        decoder_attention_heads=4, encoder_normalize_before=False, decoder_normalize_before=False,
        encoder_learned_pos=False, decoder_learned_pos=False, attention_dropout=0.0, activation_dropout=0.0,
        activation_fn="relu", dropout=0.3, adaptive_softmax_cutoff=None, adaptive_softmax_dropout=0,
        share_decoder_input_output_embed=True, share_all_embeddings=False,
        no_token_positional_embeddings=False, adaptive_input=False, no_cross_attention=False,
        cross_self_attention=False, decoder_output_dim=16, decoder_input_dim=16, no_scale_embedding=False,
        layernorm_embedding=False, tie_adaptive_weights=False, checkpoint_activations=False,
        offload_activations=False, encoder_layers_to_keep=None, decoder_layers_to_keep=None,
        encoder_layerdrop=0, decoder_layerdrop=0, quant_noise_pq=0, quant_noise_pq_block_size=8,
        quant_noise_scalar=0, max_source_positions=1024, max_target_positions=1024,
        encoder_embed_path=None, decoder_embed_path=None, source_lang="de", target_lang="en",
        optimizer="adam", lr=[0.0005], criterion="label_smoothed_cross_entropy", task="translation",
        data="data-bin/iwslt14.tokenized.de-en", left_pad_source=True, left_pad_target=False,
    )
    args.update(overrides)
    return argparse.Namespace(**args)


def _nested(args: argparse.Namespace) -> dict:
    """The omegaconf-style model config (TransformerConfig as a plain container)."""
    flat = dict(vars(args))
    nested: dict = {"_name": "transformer"}
    for side in ("encoder", "decoder"):
        nested[side] = {}
        for key in list(flat):
            if key.startswith(side + "_"):
                nested[side][key[len(side) + 1:]] = flat.pop(key)
    flat.pop("arch")
    nested.update(flat)
    return nested


def make_state_dict(args: argparse.Namespace, src_vocab: int, tgt_vocab: int, seed: int,
                    multimax: bool = True, bt_copies: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """Random weights under fairseq's key names (official MultiMax keys when `multimax`)."""
    g = torch.Generator().manual_seed(seed)
    d = args.encoder_embed_dim

    def rand(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def linear(prefix, out_dim, in_dim):
        sd[f"{prefix}.weight"] = rand(out_dim, in_dim, std=1.2 / math.sqrt(in_dim))
        sd[f"{prefix}.bias"] = rand(out_dim, std=0.1)

    def norm(prefix):
        sd[f"{prefix}.weight"] = 1 + rand(d, std=0.1)
        sd[f"{prefix}.bias"] = rand(d, std=0.1)

    def attention(prefix):
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            linear(f"{prefix}.{proj}", d, d)
        if multimax:  # trained-looking modulator values: thresholds around the score range, visible slopes
            sd[f"{prefix}.ranges"] = rand(4, std=0.8)
            sd[f"{prefix}.ts"] = rand(4, std=0.3)

    def embeddings(side, vocab):
        emb = rand(vocab, d, std=d ** -0.5)
        emb[PAD] = 0  # nn.init.constant_(m.weight[padding_idx], 0)
        return emb

    enc_emb = embeddings("encoder", src_vocab)
    sd["encoder.embed_tokens.weight"] = enc_emb
    if args.encoder_learned_pos:
        sd["encoder.embed_positions.weight"] = rand(args.max_source_positions + PAD + 1, d, std=0.3)
    else:
        sd["encoder.embed_positions._float_tensor"] = torch.FloatTensor(1)
    if args.layernorm_embedding:
        norm("encoder.layernorm_embedding")
    for i in range(args.encoder_layers):
        p = f"encoder.layers.{i}"
        attention(f"{p}.self_attn")
        norm(f"{p}.self_attn_layer_norm")
        linear(f"{p}.fc1", args.encoder_ffn_embed_dim, d)
        linear(f"{p}.fc2", d, args.encoder_ffn_embed_dim)
        norm(f"{p}.final_layer_norm")
        if bt_copies:  # fairseq 0.12.2 TransformerEncoderLayerBase: zero-filled fast-path parameters
            sd[f"{p}.in_proj_weight"] = torch.zeros(3 * d, d)
            sd[f"{p}.in_proj_bias"] = torch.zeros(3 * d)
            sd[f"{p}.out_proj_weight"] = torch.zeros(d, d)
            sd[f"{p}.out_proj_bias"] = torch.zeros(d)
            sd[f"{p}.fc1_weight"] = torch.zeros(args.encoder_ffn_embed_dim, d)
            sd[f"{p}.fc1_bias"] = torch.zeros(args.encoder_ffn_embed_dim)
            sd[f"{p}.fc2_weight"] = torch.zeros(d, args.encoder_ffn_embed_dim)
            sd[f"{p}.fc2_bias"] = torch.zeros(d)
    if args.encoder_normalize_before:
        norm("encoder.layer_norm")
    sd["encoder.version"] = torch.Tensor([3])
    dec_emb = enc_emb if args.share_all_embeddings else embeddings("decoder", tgt_vocab)
    sd["decoder.embed_tokens.weight"] = dec_emb
    if args.decoder_learned_pos:
        sd["decoder.embed_positions.weight"] = rand(args.max_target_positions + PAD + 1, d, std=0.3)
    else:
        sd["decoder.embed_positions._float_tensor"] = torch.FloatTensor(1)
    if args.layernorm_embedding:
        norm("decoder.layernorm_embedding")
    for i in range(args.decoder_layers):
        p = f"decoder.layers.{i}"
        attention(f"{p}.self_attn")
        norm(f"{p}.self_attn_layer_norm")
        attention(f"{p}.encoder_attn")
        norm(f"{p}.encoder_attn_layer_norm")
        linear(f"{p}.fc1", args.decoder_ffn_embed_dim, d)
        linear(f"{p}.fc2", d, args.decoder_ffn_embed_dim)
        norm(f"{p}.final_layer_norm")
    if args.decoder_normalize_before:
        norm("decoder.layer_norm")
    if args.share_decoder_input_output_embed or args.share_all_embeddings:
        sd["decoder.output_projection.weight"] = dec_emb
    else:
        sd["decoder.output_projection.weight"] = rand(tgt_vocab, d, std=d ** -0.5)
    if multimax:
        sd["decoder.ranges"] = rand(4, std=0.8)
        sd["decoder.ts"] = rand(4, std=0.3)
    sd["decoder.version"] = torch.Tensor([3])
    return sd


def save_fairseq_checkpoint(path: Path, args: argparse.Namespace, state: dict, omegaconf_style: bool = False) -> Path:
    """torch.save the dict fairseq 0.12's Trainer.state_dict + save_checkpoint build."""
    model_cfg = _nested(args) if omegaconf_style else args
    checkpoint = {
        "args": None,
        "cfg": {
            "_name": None,
            "common": {"_name": None, "no_progress_bar": False, "log_interval": 100, "seed": 1, "fp16": False},
            "distributed_training": {"_name": None, "distributed_world_size": 1},
            "model": model_cfg,
            "task": {"_name": "translation", "data": args.data, "source_lang": args.source_lang,
                     "target_lang": args.target_lang, "left_pad_source": True, "eval_bleu": False},
            "criterion": {"_name": "label_smoothed_cross_entropy", "label_smoothing": 0.1},
            "optimizer": {"_name": "adam", "adam_betas": "(0.9, 0.98)", "lr": [0.0005]},
            "lr_scheduler": {"_name": "inverse_sqrt", "warmup_updates": 4000},
            "generation": {"_name": None, "beam": 5, "lenpen": 1.0, "max_len_a": 0.0, "max_len_b": 200},
        },
        "model": state,
        "criterion": OrderedDict(),
        "optimizer_history": [{
            "criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "FairseqAdam",
            "lr_scheduler_state": {"best": 3.92}, "num_updates": 1200,
        }],
        "task_state": {},
        "extra_state": {
            "metrics": {}, "previous_training_time": 812.5, "val_loss": 3.92,
            "train_iterator": {"version": 2, "epoch": 3, "iterations_in_epoch": 0, "shuffle": True},
        },
        "last_optimizer_state": {
            "state": {0: {"step": 1200, "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
            "param_groups": [{"lr": 0.0005, "betas": (0.9, 0.98), "eps": 1e-8, "weight_decay": 0.0, "params": [0]}],
        },
    }
    torch.save(checkpoint, path)
    return path


def write_dictionary(path: Path, pieces: list[str]) -> Path:
    """A fairseq dict.txt: '<piece> <count>' lines, most frequent first (counts made up)."""
    path.write_text("".join(f"{p} {1000 - i}\n" for i, p in enumerate(pieces)), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ float64 reference


def fairseq_sinusoids(num: int, dim: int, padding_idx: int) -> torch.Tensor:
    """SinusoidalPositionalEmbedding.get_embedding, in float64."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(num, dtype=torch.float64).unsqueeze(1) * freq.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    table[padding_idx] = 0
    return table


def official_selu(x: torch.Tensor, ranges: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The official `SeLU` (order 2), verbatim in formula."""
    return (x + ts[0] * torch.relu(ranges[0] - x) + ts[1] * torch.relu(x - ranges[1])
            + ts[2] * torch.relu(ranges[2] - x) ** 2 + ts[3] * torch.relu(x - ranges[3]) ** 2)


@dataclass
class ReferenceTranslator:
    """fairseq's TransformerModel (eval mode) on one unpadded sentence, in float64."""

    sd: dict
    args: argparse.Namespace
    modulate: dict  # {"encoder": bool, "decoder_self": bool, "cross": bool}

    def __post_init__(self) -> None:
        self.sd = {k: v.double() for k, v in self.sd.items() if v.is_floating_point()}
        self.d = self.args.encoder_embed_dim
        self.heads = self.args.encoder_attention_heads
        self.act = torch.relu if self.args.activation_fn == "relu" else torch.nn.functional.gelu

    def _w(self, name):
        return self.sd[name]

    def _linear(self, x, prefix):
        return x @ self._w(f"{prefix}.weight").T + self._w(f"{prefix}.bias")

    def _norm(self, x, prefix):
        return torch.nn.functional.layer_norm(x, (self.d,), self._w(f"{prefix}.weight"), self._w(f"{prefix}.bias"), 1e-5)

    def _embed(self, side, tokens, learned):
        emb = self._w(f"{side}.embed_tokens.weight")[tokens]
        scale = 1.0 if self.args.no_scale_embedding else math.sqrt(self.d)
        positions = torch.arange(len(tokens)) + PAD + 1  # utils.make_positions on an unpadded row
        if learned:
            pos = self._w(f"{side}.embed_positions.weight")[positions]
        else:
            pos = fairseq_sinusoids(len(tokens) + PAD + 1, self.d, PAD)[positions]
        x = scale * emb + pos
        if self.args.layernorm_embedding:
            x = self._norm(x, f"{side}.layernorm_embedding")
        return x

    def _attention(self, x, kv, prefix, modulate, causal):
        t, s, h = x.shape[0], kv.shape[0], self.heads
        hd = self.d // h
        q = (self._linear(x, f"{prefix}.q_proj") * hd ** -0.5).view(t, h, hd).transpose(0, 1)
        k = self._linear(kv, f"{prefix}.k_proj").view(s, h, hd).transpose(0, 1)
        v = self._linear(kv, f"{prefix}.v_proj").view(s, h, hd).transpose(0, 1)
        scores = q @ k.transpose(1, 2)
        if modulate:
            scores = official_selu(scores, self._w(f"{prefix}.ranges"), self._w(f"{prefix}.ts"))
        if causal:
            scores = scores + torch.triu(torch.full((t, s), float("-inf"), dtype=torch.float64), 1)
        out = torch.softmax(scores, dim=-1) @ v
        return self._linear(out.transpose(0, 1).reshape(t, self.d), f"{prefix}.out_proj")

    def _residual(self, x, pre, norm, fn):
        if pre:
            return x + fn(self._norm(x, norm))
        return self._norm(x + fn(x), norm)

    def encode(self, tokens: list[int]) -> torch.Tensor:
        a = self.args
        x = self._embed("encoder", torch.tensor(tokens), a.encoder_learned_pos)
        pre = a.encoder_normalize_before
        for i in range(a.encoder_layers):
            p = f"encoder.layers.{i}"
            x = self._residual(x, pre, f"{p}.self_attn_layer_norm",
                               lambda h: self._attention(h, h, f"{p}.self_attn", self.modulate["encoder"], False))
            x = self._residual(x, pre, f"{p}.final_layer_norm",
                               lambda h: self._linear(self.act(self._linear(h, f"{p}.fc1")), f"{p}.fc2"))
        return self._norm(x, "encoder.layer_norm") if pre else x

    def decoder_logits(self, prefix: list[int], memory: torch.Tensor) -> torch.Tensor:
        """Output-layer logits [T, V] for the whole prefix (teacher forcing, no cache)."""
        a = self.args
        x = self._embed("decoder", torch.tensor(prefix), a.decoder_learned_pos)
        pre = a.decoder_normalize_before
        for i in range(a.decoder_layers):
            p = f"decoder.layers.{i}"
            x = self._residual(x, pre, f"{p}.self_attn_layer_norm",
                               lambda h: self._attention(h, h, f"{p}.self_attn", self.modulate["decoder_self"], True))
            x = self._residual(x, pre, f"{p}.encoder_attn_layer_norm",
                               lambda h: self._attention(h, memory, f"{p}.encoder_attn", self.modulate["cross"], False))
            x = self._residual(x, pre, f"{p}.final_layer_norm",
                               lambda h: self._linear(self.act(self._linear(h, f"{p}.fc1")), f"{p}.fc2"))
        if pre:
            x = self._norm(x, "decoder.layer_norm")
        logits = x @ self._w("decoder.output_projection.weight").T
        if "decoder.ranges" in self.sd:
            logits = official_selu(logits, self._w("decoder.ranges"), self._w("decoder.ts"))
        return logits

    def greedy(self, src: list[int], max_len_a: float = 0.0, max_len_b: int = 200, min_len: int = 1,
               unk_penalty: float = 0.0, max_positions: Optional[int] = None) -> list[int]:
        """SequenceGenerator with beam 1: returns the hypothesis tokens (EOS included)."""
        memory = self.encode(src)
        limit = (max_positions or self.args.max_target_positions) - 1
        max_len = min(int(max_len_a * len(src) + max_len_b), limit)
        tokens = [EOS]
        for step in range(max_len + 1):
            lprobs = torch.log_softmax(self.decoder_logits(tokens, memory)[-1], dim=-1)
            lprobs[PAD] = float("-inf")
            lprobs[UNK] -= unk_penalty
            if step >= max_len:
                keep = lprobs[EOS].clone()
                lprobs[:] = float("-inf")
                lprobs[EOS] = keep
            if step < min_len:
                lprobs[EOS] = float("-inf")
            token = int(lprobs.argmax())
            tokens.append(token)
            if token == EOS:
                break
        return tokens[1:]

    def _adjusted_lprobs(self, prefix, memory, step, max_len, min_len, unk_penalty):
        lprobs = torch.log_softmax(self.decoder_logits(prefix, memory)[-1], dim=-1)
        lprobs[PAD] = float("-inf")
        lprobs[UNK] -= unk_penalty
        if step >= max_len:
            keep = lprobs[EOS].clone()
            lprobs[:] = float("-inf")
            lprobs[EOS] = keep
        if step < min_len:
            lprobs[EOS] = float("-inf")
        return lprobs

    def beam(self, src: list[int], beam_size: int = 5, lenpen: float = 1.0, max_len_a: float = 0.0,
             max_len_b: int = 200, min_len: int = 1, unk_penalty: float = 0.0) -> tuple[list[int], float]:
        """SequenceGenerator + search.BeamSearch for one sentence: best (tokens, normalised score).

        Per step: the 2K best (beam, token) of cumulative scores (only beam 0 at step 0); EOS among
        the first K with a finite score is finalised with score / (step + 1) ** lenpen while fewer than
        K are; the sentence ends when K are; the first K other candidates stay live."""
        memory = self.encode(src)
        max_len = min(int(max_len_a * len(src) + max_len_b), self.args.max_target_positions - 1)
        live = [([EOS], 0.0)]
        finalized: list[tuple[list[int], float]] = []
        for step in range(max_len + 1):
            rows = torch.stack([score + self._adjusted_lprobs(toks, memory, step, max_len, min_len, unk_penalty)
                                for toks, score in live])  # [beams, V]
            vocab = rows.shape[1]
            flat = rows.reshape(-1)
            top, index = flat.topk(min(2 * beam_size, flat.numel() - 1))
            beams, tokens = (index // vocab).tolist(), (index % vocab).tolist()
            scores = top.tolist()
            for rank in range(beam_size):
                if tokens[rank] == EOS and scores[rank] != float("-inf") and len(finalized) < beam_size:
                    finalized.append((live[beams[rank]][0][1:] + [EOS], scores[rank] / (step + 1) ** lenpen))
            if len(finalized) == beam_size:
                break
            active = [r for r in range(len(tokens)) if not (tokens[r] == EOS and scores[r] != float("-inf"))]
            live = [(live[beams[r]][0] + [tokens[r]], scores[r]) for r in active[:beam_size]]
        return sorted(finalized, key=lambda f: f[1], reverse=True)[0]
