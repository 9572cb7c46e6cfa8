"""`mmserve import`: turn checkpoints trained elsewhere into mmserve model directories."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Import checkpoints trained elsewhere (the authors' official MultiMax ViT and fairseq translators).",
    no_args_is_help=True,
)


@app.command("official-vit")
def official_vit(
    src: Path = typer.Argument(
        ..., help="official checkpoint (.pth): a state dict or {'model': state_dict, ...}"
    ),
    out_dir: Path = typer.Argument(..., help="model directory to write"),
    heads: int = typer.Option(..., "--heads", help="attention heads (not visible in any tensor shape)"),
    layer_norm_eps: float = typer.Option(1e-6, "--layer-norm-eps", help="LayerNorm eps (DeiT models: 1e-6)"),
    num_classes: Optional[int] = typer.Option(
        None, "--num-classes", help="check the head has this many classes"
    ),
    labels: Optional[Path] = typer.Option(None, "--labels", help="class names: one per line, or a JSON list"),
    name: Optional[str] = typer.Option(
        None, "--name", help="model name (default: the output directory's name)"
    ),
) -> None:
    """Import an official MultiMax VisionTransformer checkpoint (torch.load(weights_only=True) only)."""
    from mmserve.checkpoints import read_config
    from mmserve.checkpoints.official import import_official_vit

    directory = import_official_vit(src, out_dir, heads, layer_norm_eps, num_classes, labels, name)
    arch = read_config(directory).architecture
    typer.echo(
        f"wrote {directory}: embed {arch['embed_dim']}, depth {arch['depth']}, heads {arch['num_heads']}, "
        f"patch {arch['patch_size']}, image {arch['img_size']}, classes {arch['num_classes']}, "
        f"attention {arch['attention_fn']}"
    )


@app.command("official-fairseq")
def official_fairseq(
    src: Path = typer.Argument(..., help="fairseq checkpoint (checkpoint_best.pt) of a transformer translator"),
    out_dir: Path = typer.Argument(..., help="model directory to write"),
    source_dict: Path = typer.Option(..., "--source-dict", help="fairseq dictionary of the source (dict.SRC.txt)"),
    target_dict: Path = typer.Option(..., "--target-dict", help="fairseq dictionary of the target (dict.TGT.txt)"),
    bpe: str = typer.Option("none", "--bpe", help="none | subword-nmt | sentencepiece (as --bpe at training)"),
    bpe_codes: Optional[Path] = typer.Option(None, "--bpe-codes", help="subword-nmt codes file (--bpe subword-nmt)"),
    sentencepiece_model: Optional[Path] = typer.Option(
        None, "--sentencepiece-model", help="sentencepiece .model file (--bpe sentencepiece)"
    ),
    tokenizer: str = typer.Option("none", "--tokenizer", help="none | moses (sacremoses, as fairseq's --tokenizer moses)"),
    source_lang: Optional[str] = typer.Option(None, "--source-lang", help="default: the checkpoint's task setting, else en"),
    target_lang: Optional[str] = typer.Option(None, "--target-lang", help="default: the checkpoint's task setting, else en"),
    placement: str = typer.Option(
        "training", "--multimax-placement",
        help="training: where the official code trained MultiMax (encoder + decoder self-attention, output); "
        "paper: every attention; fairseq-generate: what official fairseq-generate computes (no decoder "
        "self-attention modulator); fairseq-generate-bt: also without the encoder's (fairseq 0.12.2 post-norm fast path)",
    ),
    beam: int = typer.Option(5, "--beam", help="default beam size (fairseq-generate: 5)"),
    lenpen: float = typer.Option(1.0, "--lenpen", help="length penalty: score / length ** lenpen"),
    max_len_a: float = typer.Option(0.0, "--max-len-a"),
    max_len_b: int = typer.Option(200, "--max-len-b"),
    min_len: int = typer.Option(1, "--min-len"),
    unkpen: float = typer.Option(0.0, "--unkpen"),
    name: Optional[str] = typer.Option(None, "--name", help="model name (default: the output directory's name)"),
) -> None:
    """Import a fairseq transformer checkpoint trained with the official MultiMax code (or SoftMax).

    Read with torch.load(weights_only=True) allowing argparse.Namespace only; tokenisation and
    decoding defaults are fairseq-interactive's / fairseq-generate's.
    """
    from mmserve.checkpoints import read_config
    from mmserve.checkpoints.fairseq import import_official_fairseq
    from mmserve.errors import UserError

    choices = {"--bpe": (bpe, ("none", "subword-nmt", "sentencepiece")), "--tokenizer": (tokenizer, ("none", "moses"))}
    for option, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"{option} {value!r}: expected one of {', '.join(allowed)}")
    if bpe_codes and sentencepiece_model:
        raise UserError("give --bpe-codes or --sentencepiece-model, not both")
    bpe_file = bpe_codes or sentencepiece_model
    if bpe == "subword-nmt" and bpe_codes is None or bpe == "sentencepiece" and sentencepiece_model is None:
        raise UserError(f"--bpe {bpe} needs {'--bpe-codes' if bpe == 'subword-nmt' else '--sentencepiece-model'}")
    if bpe == "none" and bpe_file is not None:
        raise UserError("a BPE file was given but --bpe is none")
    directory = import_official_fairseq(
        src, out_dir, source_dict, target_dict, placement, bpe, bpe_file, tokenizer, source_lang, target_lang,
        beam, lenpen, max_len_a, max_len_b, min_len, unkpen, name,
    )
    config = read_config(directory)
    arch = config.architecture
    typer.echo(
        f"wrote {directory}: {arch['encoder_layers']}+{arch['decoder_layers']} layers, width {arch['d_model']}, "
        f"heads {arch['num_heads']}, {arch['encoder_norm']}-norm, vocab {arch['src_vocab_size']}/{arch['tgt_vocab_size']}, "
        f"MultiMax placement {config.source['multimax_placement']}"
    )
