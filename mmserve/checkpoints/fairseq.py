"""Import a fairseq 0.12 transformer checkpoint trained with the official MultiMax code (or plain SoftMax).

The checkpoint (`checkpoint_best.pt`) is a pickle of `{"args", "cfg", "model", "optimizer_history",
"extra_state", "last_optimizer_state", ...}`. fairseq 0.12 stores the model's settings as an argparse
`Namespace` under cfg["model"] (legacy `--arch` models) or as a plain dict (omegaconf configs turned
into containers); older versions under "args". It is read with `torch.load(weights_only=True)`
allowing `argparse.Namespace` only (`safe_load.py`): any other pickled class is refused, naming it,
before it could run.

Where MultiMax runs (read from the official `multihead_attention.py` / `transformer_decoder.py`): the
modulator is applied to the raw scores, before the masks, only inside `multi_head_attention_forward`,
which fairseq's `MultiheadAttention.forward` calls when there is no incremental state and `static_kv`
is false; in fairseq's own branch the line is commented out. The decoder's output layer is always
modulated (`decoder.ranges`/`decoder.ts`). Hence the placements:

    training          encoder self-attn and decoder self-attn MultiMax, cross-attn SoftMax (its
                      static_kv=True call never takes the modulated branch, so its saved ranges/ts are
                      the untrained initial values): the function the model was trained as (default)
    paper             every attention MultiMax, as the paper describes it (uses cross ranges/ts)
    fairseq-generate  what fairseq-generate computes with the official code: incremental decoding
                      drops the decoder self-attention modulator too (a train/inference mismatch)
    fairseq-generate-bt  as fairseq-generate, and fairseq 0.12.2's BetterTransformer encoder fast
                      path (post-norm models, eval, torch >= 1.12) skips the encoder's modulator

Every fairseq key is mapped to the mmserve seq2seq layout and the result checked key by key and shape
by shape against the model its config builds; settings the translator does not implement (adaptive
softmax/input, cross-self-attention, layer dropping, projections between widths, ...) are refused
with the setting's name.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from mmserve.models import MultiMaxTranslator, TranslatorConfig

from .errors import CheckpointError
from .manifest import sha256_file
from .model_dir import ModelDirConfig, save_model_dir
from .safe_load import check_state_dict, safe_torch_load

__all__ = [
    "PLACEMENTS",
    "Placement",
    "FairseqCheckpoint",
    "read_fairseq_checkpoint",
    "fairseq_translator_config",
    "map_fairseq_state_dict",
    "import_official_fairseq",
]

Placement = Literal["training", "paper", "fairseq-generate", "fairseq-generate-bt"]
PLACEMENTS: dict[str, dict[str, bool]] = {
    "training": {"encoder": True, "decoder_self": True, "cross": False},
    "paper": {"encoder": True, "decoder_self": True, "cross": True},
    "fairseq-generate": {"encoder": True, "decoder_self": False, "cross": False},
    "fairseq-generate-bt": {"encoder": False, "decoder_self": False, "cross": False},
}

# fairseq's base_architecture defaults, for settings an older checkpoint does not record.
_DEFAULTS: dict[str, Any] = {
    "encoder_normalize_before": False,
    "decoder_normalize_before": False,
    "encoder_learned_pos": False,
    "decoder_learned_pos": False,
    "activation_fn": "relu",
    "share_decoder_input_output_embed": False,
    "share_all_embeddings": False,
    "no_token_positional_embeddings": False,
    "adaptive_softmax_cutoff": None,
    "adaptive_input": False,
    "no_cross_attention": False,
    "cross_self_attention": False,
    "no_scale_embedding": False,
    "layernorm_embedding": False,
    "encoder_layers_to_keep": None,
    "decoder_layers_to_keep": None,
    "no_decoder_final_norm": False,
    "max_source_positions": 1024,
    "max_target_positions": 1024,
}
# Settings that change the network in a way this translator does not implement: refused when truthy.
_UNSUPPORTED = {
    "adaptive_softmax_cutoff": "adaptive softmax",
    "adaptive_input": "adaptive input embeddings",
    "no_cross_attention": "a decoder without cross-attention",
    "cross_self_attention": "cross+self-attention",
    "no_token_positional_embeddings": "no positional embeddings",
    "encoder_layers_to_keep": "pruned encoder layers (encoder_layers_to_keep)",
    "decoder_layers_to_keep": "pruned decoder layers (decoder_layers_to_keep)",
    "no_decoder_final_norm": "no_decoder_final_norm",
    "tie_adaptive_weights": "tied adaptive weights",
}
# Unused state in fairseq 0.12 checkpoints: version counters, the sinusoidal table's dtype probe, and
# 0.12.2's zero-filled BetterTransformer copies of every encoder layer's weights.
_IGNORED = re.compile(
    r"(^|\.)version$|\._float_tensor$"
    r"|^encoder\.layers\.\d+\.(in_proj|out_proj|fc1|fc2|norm1|norm2)_(weight|bias)$"
)
_RENAMES = [
    (re.compile(r"^(encoder|decoder)\.embed_tokens\."), r"\1.embed.embed_tokens."),
    (re.compile(r"^(encoder|decoder)\.embed_positions\."), r"\1.embed.embed_positions."),
    (re.compile(r"^(encoder|decoder)\.layernorm_embedding\."), r"\1.embed.layernorm_embedding."),
    (re.compile(r"^(encoder|decoder)\.layer_norm\."), r"\1.norm."),
    (re.compile(r"^(encoder|decoder)(\.layers\.\d+)\.self_attn_layer_norm\."), r"\1\2.self_attn_norm."),
    (re.compile(r"^decoder(\.layers\.\d+)\.encoder_attn_layer_norm\."), r"decoder\1.cross_attn_norm."),
    (re.compile(r"^decoder(\.layers\.\d+)\.encoder_attn\."), r"decoder\1.cross_attn."),
    (re.compile(r"^(encoder|decoder)(\.layers\.\d+)\.final_layer_norm\."), r"\1\2.ffn_norm."),
    (re.compile(r"^(encoder|decoder)(\.layers\.\d+)\.(fc1|fc2)\."), r"\1\2.ffn.\3."),
    (re.compile(r"^decoder\.(output_projection|embed_out)\b(\.weight)?"), r"output_projection.weight"),
    (re.compile(r"^decoder\.(ranges|ts)$"), r"\1"),
]


@dataclass
class FairseqCheckpoint:
    """What the importer needs from a fairseq checkpoint: weights and the model/task settings."""

    path: Path
    state: dict[str, torch.Tensor]
    args: dict[str, Any]
    task: dict[str, Any]


def _plain(value: Any) -> dict[str, Any]:
    """Model settings as one flat dict with fairseq's legacy names.

    A dataclass config (`TransformerConfig`, saved by `OmegaConf.to_container`) nests the per-stack
    settings (`encoder: {embed_dim, layers, ...}`); flattened they are the legacy `encoder_embed_dim`,
    `encoder_layers`, ... that `--arch` models store in their Namespace.
    """
    if isinstance(value, argparse.Namespace):
        return dict(vars(value))
    if not isinstance(value, dict):
        return {}
    flat = {k: v for k, v in value.items() if not (k in ("encoder", "decoder") and isinstance(v, dict))}
    for side in ("encoder", "decoder"):
        if isinstance(value.get(side), dict):
            flat.update({f"{side}_{k}": v for k, v in value[side].items()})
    return flat


def read_fairseq_checkpoint(path: Path | str) -> FairseqCheckpoint:
    """Load a fairseq checkpoint safely and find its model settings (cfg.model, else args)."""
    path = Path(path)
    obj = safe_torch_load(path, [argparse.Namespace], "a fairseq checkpoint (checkpoint_best.pt)")
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {list(obj)[:6]}"
        raise CheckpointError(
            path, f"not a fairseq checkpoint: expected a dict with a 'model' state dict, got a {kind}"
        )
    state = obj["model"]
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, f"'model' is not a state dict of tensors (e.g. entry {bad[0]!r})")
    cfg = obj.get("cfg")
    args: dict[str, Any] = {}
    task: dict[str, Any] = {}
    if isinstance(cfg, dict):
        args = _plain(cfg.get("model"))
        task = _plain(cfg.get("task"))
    if not args:
        args = _plain(obj.get("args"))
        task = task or args
    if not args:
        raise CheckpointError(
            path, "has no model settings (neither cfg['model'] nor 'args'): cannot tell the architecture"
        )
    return FairseqCheckpoint(path, dict(state), args, task)


def _setting(args: dict[str, Any], key: str) -> Any:
    return args.get(key, _DEFAULTS.get(key))


def _order_of(path: Path, state: dict[str, torch.Tensor], prefix: str) -> Optional[int]:
    ranges, ts = state.get(f"{prefix}ranges"), state.get(f"{prefix}ts")
    if ranges is None and ts is None:
        return None
    if ranges is None or ts is None:
        raise CheckpointError(path, f"has only one of {prefix}ranges / {prefix}ts")
    if ranges.dim() != 1 or ranges.shape != ts.shape or ranges.numel() % 2:
        raise CheckpointError(
            path,
            f"{prefix}ranges/ts have shapes {tuple(ranges.shape)}/{tuple(ts.shape)}: expected 2N scalars each",
        )
    return ranges.numel() // 2


def fairseq_translator_config(
    ckpt: FairseqCheckpoint, placement: Placement, src_vocab: int, tgt_vocab: int
) -> TranslatorConfig:
    """The mmserve TranslatorConfig of a fairseq transformer checkpoint under a MultiMax placement."""
    path, args, state = ckpt.path, ckpt.args, ckpt.state
    arch = str(args.get("arch") or args.get("_name") or "")
    if not arch.startswith("transformer") or arch.startswith(("transformer_lm", "transformer_align")):
        raise CheckpointError(
            path,
            f"architecture {arch or '(none recorded)'!r} is not fairseq's encoder-decoder 'transformer' family",
        )
    for key, what in _UNSUPPORTED.items():
        if _setting(args, key):
            raise CheckpointError(
                path, f"uses {what} (setting {key}={args[key]!r}): not supported by the importer"
            )
    dims = {k: args.get(k) for k in ("encoder_embed_dim", "decoder_embed_dim")}
    for key in ("decoder_input_dim", "decoder_output_dim"):
        if args.get(key) not in (None, dims["decoder_embed_dim"]):
            raise CheckpointError(
                path, f"{key}={args[key]} differs from decoder_embed_dim: projections between widths are not supported"
            )
    if dims["encoder_embed_dim"] != dims["decoder_embed_dim"]:
        raise CheckpointError(path, f"encoder and decoder widths differ ({dims}): not supported")
    heads = (args.get("encoder_attention_heads"), args.get("decoder_attention_heads"))
    if heads[0] != heads[1]:
        raise CheckpointError(
            path, f"encoder/decoder attention heads differ {heads}: not supported (one KV-cache layout)"
        )
    activation = _setting(args, "activation_fn")
    if activation not in ("relu", "gelu"):
        raise CheckpointError(path, f"activation_fn={activation!r}: only relu and gelu are supported")
    learned = (_setting(args, "encoder_learned_pos"), _setting(args, "decoder_learned_pos"))
    if learned[0] != learned[1]:
        raise CheckpointError(path, f"encoder_learned_pos/decoder_learned_pos differ {learned}: not supported")
    max_src, max_tgt = int(_setting(args, "max_source_positions")), int(_setting(args, "max_target_positions"))
    if learned[0] and max_src != max_tgt:
        raise CheckpointError(
            path,
            f"learned positions with max_source_positions {max_src} != max_target_positions {max_tgt}: not supported",
        )
    enc_norm = "pre" if _setting(args, "encoder_normalize_before") else "post"
    dec_norm = "pre" if _setting(args, "decoder_normalize_before") else "post"
    if placement == "fairseq-generate-bt" and enc_norm == "pre":
        raise CheckpointError(
            path,
            "placement fairseq-generate-bt applies to post-norm encoders only "
            "(fairseq uses no fast path for pre-norm ones)",
        )
    needed = ["encoder_embed_dim", "encoder_layers", "decoder_layers", "encoder_attention_heads",
              "encoder_ffn_embed_dim", "decoder_ffn_embed_dim"]
    absent = [k for k in needed if args.get(k) is None]
    if absent:
        raise CheckpointError(path, f"model settings lack {', '.join(absent)}")
    layers = (int(args["encoder_layers"]), int(args["decoder_layers"]))

    # MultiMax: which modules carry ranges/ts, and which of those the placement switches on.
    orders = {}
    kinds = {
        "encoder": [f"encoder.layers.{i}.self_attn." for i in range(layers[0])],
        "decoder_self": [f"decoder.layers.{i}.self_attn." for i in range(layers[1])],
        "cross": [f"decoder.layers.{i}.encoder_attn." for i in range(layers[1])],
    }
    fns: dict[str, str] = {}
    for kind, prefixes in kinds.items():
        found = [_order_of(path, state, p) for p in prefixes]
        if all(o is None for o in found):
            fns[kind] = "softmax"
            continue
        missing = [p for p, o in zip(prefixes, found) if o is None]
        if missing and PLACEMENTS[placement][kind]:
            raise CheckpointError(
                path, f"missing MultiMax parameters {missing[0]}ranges/ts (other {kind} layers have them)"
            )
        orders.update({p: o for p, o in zip(prefixes, found) if o is not None})
        fns[kind] = "multimax" if PLACEMENTS[placement][kind] else "softmax"
    head_order = _order_of(path, state, "decoder.")
    if head_order is not None:
        orders["decoder."] = head_order
    if len(set(orders.values())) > 1:
        raise CheckpointError(path, f"MultiMax orders differ between modules: {sorted(set(orders.values()))}")
    order = next(iter(orders.values()), 2)
    d_model = int(dims["encoder_embed_dim"])
    share_all = bool(_setting(args, "share_all_embeddings"))
    share_dec = share_all or bool(_setting(args, "share_decoder_input_output_embed"))
    try:
        return TranslatorConfig(
            src_vocab_size=src_vocab,
            tgt_vocab_size=tgt_vocab,
            d_model=d_model,
            num_heads=int(heads[0]),
            encoder_layers=layers[0],
            decoder_layers=layers[1],
            ffn_dim=int(args["encoder_ffn_embed_dim"]),
            decoder_ffn_dim=int(args["decoder_ffn_embed_dim"]),
            dropout=0.0,
            positions="learned" if learned[0] else "fairseq-sinusoidal",
            position_offset=2,  # fairseq: padding_idx (1) + 1
            max_positions=min(max_src, max_tgt),
            encoder_norm=enc_norm,
            decoder_norm=dec_norm,
            layernorm_embedding=bool(_setting(args, "layernorm_embedding")),
            activation=activation,
            scale_embedding=not _setting(args, "no_scale_embedding"),
            tie_embeddings="all" if share_all else ("decoder" if share_dec else "none"),
            attention_fn="softmax",
            encoder_attention_fn=fns["encoder"],
            decoder_self_attention_fn=fns["decoder_self"],
            cross_attention_fn=fns["cross"],
            output_fn="multimax" if head_order is not None else "softmax",
            multimax_order=order,
            layer_norm_eps=1e-5,
        )
    except ValueError as exc:
        raise CheckpointError(path, f"settings give an invalid architecture: {exc}") from exc


def map_fairseq_state_dict(ckpt: FairseqCheckpoint, config: TranslatorConfig) -> dict[str, torch.Tensor]:
    """fairseq keys -> mmserve keys; ranges/ts of modules the placement runs as SoftMax are left out."""
    out: dict[str, torch.Tensor] = {}
    softmax_prefixes = []
    if config.encoder_fn == "softmax":
        softmax_prefixes.append(re.compile(r"^encoder\.layers\.\d+\.self_attn\.(ranges|ts)$"))
    if config.decoder_self_fn == "softmax":
        softmax_prefixes.append(re.compile(r"^decoder\.layers\.\d+\.self_attn\.(ranges|ts)$"))
    if config.cross_fn == "softmax":
        softmax_prefixes.append(re.compile(r"^decoder\.layers\.\d+\.encoder_attn\.(ranges|ts)$"))
    for key, tensor in ckpt.state.items():
        if _IGNORED.search(key) or any(p.match(key) for p in softmax_prefixes):
            continue
        new = key
        for pattern, replacement in _RENAMES:
            new = pattern.sub(replacement, new)
        out[new] = tensor
    if "output_projection.weight" not in out and config.tie_embeddings != "none":
        out["output_projection.weight"] = out.get("decoder.embed.embed_tokens.weight")  # older checkpoints
    if config.tie_embeddings == "all" and "encoder.embed.embed_tokens.weight" in out:
        enc, dec = out["encoder.embed.embed_tokens.weight"], out.get("decoder.embed.embed_tokens.weight")
        if dec is not None and (enc.shape != dec.shape or not torch.equal(enc, dec)):
            raise CheckpointError(
                ckpt.path, "share_all_embeddings is set but encoder and decoder embeddings differ"
            )
    return {k: v for k, v in out.items() if v is not None}


def _generation(config: TranslatorConfig, beam: int, lenpen: float, max_len_a: float, max_len_b: int,
                min_len: int, unkpen: float) -> dict[str, Any]:
    from mmserve.tasks.translation import GenerationConfig

    limit = config.max_positions
    generation = GenerationConfig(
        pad_id=1, bos_id=2, eos_id=2, unk_id=3,  # fairseq: the decoder starts from </s>
        max_source_tokens=config.max_positions,
        max_length=min(max_len_b, limit - 1) + 1,
        max_length_limit=limit,
        beam_size=beam,
        length_penalty=lenpen,
        max_source_chars=16 * config.max_positions,  # generous: refuses only absurd texts before tokenising
        search="fairseq",
        min_length=min_len,
        unk_penalty=unkpen,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
    )
    return generation.model_dump(exclude_none=True)


def import_official_fairseq(
    src: Path | str,
    out_dir: Path | str,
    source_dict: Path | str,
    target_dict: Path | str,
    placement: Placement = "training",
    bpe: str = "none",
    bpe_file: Optional[Path | str] = None,
    tokenizer: str = "none",
    source_lang: Optional[str] = None,
    target_lang: Optional[str] = None,
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    min_len: int = 1,
    unkpen: float = 0.0,
    name: Optional[str] = None,
) -> Path:
    """Convert a fairseq MultiMax (or SoftMax) transformer checkpoint into an mmserve model directory.

    Generation defaults are fairseq-generate's (beam 5, lenpen 1, max_len_b 200, min_len 1, unkpen 0)
    unless given; every one stays overridable per request where the API exposes it.
    """
    from mmserve.tasks.fairseq_text import (
        FAIRSEQ_TEXT_DIR,
        SETTINGS_NAME,
        SOURCE_DICT_NAME,
        TARGET_DICT_NAME,
        FairseqDictionary,
        FairseqTextSettings,
        bpe_file_name,
        build_pipeline,
    )
    from mmserve.tasks.translation import GenerationConfig

    if placement not in PLACEMENTS:
        raise CheckpointError(
            Path(src), f"unknown MultiMax placement {placement!r} (known: {sorted(PLACEMENTS)})"
        )
    ckpt = read_fairseq_checkpoint(src)
    src_dict, tgt_dict = FairseqDictionary.load(source_dict), FairseqDictionary.load(target_dict)
    source_lang = source_lang or ckpt.task.get("source_lang") or "en"
    target_lang = target_lang or ckpt.task.get("target_lang") or "en"
    settings = FairseqTextSettings(
        tokenizer=tokenizer, bpe=bpe, source_lang=source_lang, target_lang=target_lang
    )
    bpe_path = Path(bpe_file) if bpe_file else None
    if (bpe == "none") != (bpe_path is None):
        need = "takes no" if bpe == "none" else "needs a"
        raise CheckpointError(bpe_path or Path(src), f"--bpe {bpe} {need} BPE file")
    config = fairseq_translator_config(ckpt, placement, len(src_dict), len(tgt_dict))
    if config.tie_embeddings == "all" and src_dict.symbols != tgt_dict.symbols:
        raise CheckpointError(
            Path(target_dict), "differs from the source dictionary, but the model shares all embeddings "
            "(--share-all-embeddings needs one joined dictionary, as fairseq requires)",
        )
    for side, dictionary, key in (("source", src_dict, "encoder.embed_tokens.weight"),
                                  ("target", tgt_dict, "decoder.embed_tokens.weight")):
        rows = ckpt.state.get(key)
        if rows is not None and rows.shape[0] != len(dictionary):
            raise CheckpointError(
                Path(source_dict if side == "source" else target_dict),
                f"has {len(dictionary)} symbols (4 special + file) but the checkpoint's {key} "
                f"has {rows.shape[0]} rows: "
                "not the dictionary this model was trained with",
            )
    model = MultiMaxTranslator(config)
    state = map_fairseq_state_dict(ckpt, config)
    check_state_dict(ckpt.path, model, state, "the fairseq architecture its settings describe")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    model.eval()
    generation = _generation(config, beam, lenpen, max_len_a, max_len_b, min_len, unkpen)
    # Fail now, not at serving time, if the tokenizer/BPE libraries or files are unusable.
    build_pipeline(src_dict, tgt_dict, settings, GenerationConfig(**generation), bpe_path)

    side_files: dict[str, Any] = {
        f"{FAIRSEQ_TEXT_DIR}/{SETTINGS_NAME}": settings.model_dump_json(indent=2).encode(),
        f"{FAIRSEQ_TEXT_DIR}/{SOURCE_DICT_NAME}": Path(source_dict),
        f"{FAIRSEQ_TEXT_DIR}/{TARGET_DICT_NAME}": Path(target_dict),
    }
    if bpe_path is not None:
        side_files[f"{FAIRSEQ_TEXT_DIR}/{bpe_file_name(settings)}"] = bpe_path
    digest = sha256_file(ckpt.path)
    out_dir = Path(out_dir)
    dropped = sorted(k for k in ckpt.state if k.endswith((".ranges", ".ts")) and not _kept(k, state))
    record = {
        "kind": "official-fairseq",
        "file": ckpt.path.name,
        "sha256": digest,
        "arch": ckpt.args.get("arch") or ckpt.args.get("_name"),
        "multimax_placement": placement if config.uses_multimax else "softmax",
        "unused_multimax_keys": len(dropped),
    }
    dir_config = ModelDirConfig(
        name=name or out_dir.name,
        task="translation",
        architecture=config.model_dump(),
        tokenizer=FAIRSEQ_TEXT_DIR,
        preprocessing=settings.model_dump(),
        generation=generation,
        source=record,
    )
    card = _card(dir_config, config, settings, record)
    return save_model_dir(out_dir, model, dir_config, side_files=side_files, card=card)


def _kept(key: str, mapped: dict[str, torch.Tensor]) -> bool:
    tail = key.replace("decoder.", "", 1) if re.match(r"^decoder\.(ranges|ts)$", key) else key
    tail = tail.replace(".encoder_attn.", ".cross_attn.")
    return tail in mapped


def _card(dir_config: ModelDirConfig, config: TranslatorConfig, settings, record: dict[str, Any]) -> str:
    from mmserve.tasks.translation import GenerationConfig

    gen = GenerationConfig.model_validate(dir_config.generation)
    fns = (
        f"encoder self-attention {config.encoder_fn}, decoder self-attention {config.decoder_self_fn}, "
        f"cross-attention {config.cross_fn}, output layer {config.head_fn}"
    )
    return f"""# {dir_config.name}

Imported from the fairseq checkpoint `{record['file']}` (sha256 `{record['sha256']}`, arch
`{record['arch']}`) with `mmserve import official-fairseq`.

- Architecture: {config.encoder_layers} encoder / {config.decoder_layers} decoder layers, width {config.d_model},
  {config.num_heads} heads, FFN {config.ffn_dim} / {config.decoder_ffn_dim}, {config.encoder_norm}-norm encoder,
  {config.decoder_norm}-norm decoder, {config.positions} positions (offset {config.position_offset}),
  embeddings tied: {config.tie_embeddings}, activation {config.activation}, layernorm_embedding
  {config.layernorm_embedding}, vocabularies {config.src_vocab_size} / {config.tgt_vocab_size}.
- MultiMax placement `{record['multimax_placement']}`: {fns} (order {config.multimax_order}).
  {record['unused_multimax_keys']} saved ranges/ts tensors are not used under this placement.
- Text: tokenizer {settings.tokenizer}, BPE {settings.bpe}, languages {settings.source_lang} -> {settings.target_lang}
  (fairseq-interactive's pipeline; unknown pieces become <unk>).
- Decoding defaults (fairseq-generate's rules): beam {gen.beam_size}, lenpen {gen.length_penalty},
  max_len_a {gen.max_len_a}, max_len_b {gen.max_len_b}, min_len {gen.min_length}, unkpen {gen.unk_penalty}.
"""

