"""`mmserve train translator`: the bundled numbers translator (English -> German number words)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .train_cmd import app


@app.command("translator")
def translator(
    out: Path = typer.Option(..., "--out", help="model directory to write (replaced if it exists)"),
    attention_fn: str = typer.Option("multimax", "--attention-fn", help="multimax or softmax"),
    seed: int = typer.Option(0, "--seed", help="seeds the split, the initialisation, dropout and data order"),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch intra-op threads (default: all cores)"
    ),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="optimizer steps (default 600 unless --minutes is given)"
    ),
    minutes: Optional[float] = typer.Option(
        None, "--minutes",
        help="wall-clock budget of the training loop; alone, the LR schedule follows the clock",
    ),
    batch_size: int = typer.Option(256, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    d_model: int = typer.Option(128, "--d-model"),
    heads: int = typer.Option(4, "--heads"),
    layers: int = typer.Option(3, "--layers", help="encoder and decoder layers each"),
    ffn_dim: int = typer.Option(512, "--ffn-dim"),
    vocab_size: int = typer.Option(320, "--vocab-size", help="shared BPE vocabulary"),
    train_size: int = typer.Option(120_000, "--train-size", help="training pairs (0..999 included)"),
    dev_size: int = typer.Option(2000, "--dev-size", help="dev pairs (progress display only)"),
    test_size: int = typer.Option(2000, "--test-size", help="held-out test pairs (the reported figures)"),
    beam_size: int = typer.Option(
        4, "--beam-size", help="beam of the test evaluation and the served default"
    ),
    eval_every: int = typer.Option(
        200, "--eval-every", help="greedy dev exact match every N steps (0: never)"
    ),
    name: Optional[str] = typer.Option(None, "--name", help="model name (default: the directory's name)"),
) -> None:
    """Train the numbers translator on num2words data and write a model directory with its card."""
    from pydantic import ValidationError

    from mmserve.errors import UserError
    from mmserve.training.translator import TranslatorTrainConfig, train_translator

    from .validation import options_error

    if attention_fn not in ("multimax", "softmax"):
        raise UserError(f"--attention-fn must be multimax or softmax, got {attention_fn!r}")
    if steps is None and minutes is None:
        steps = TranslatorTrainConfig.model_fields["steps"].default
    try:
        cfg = TranslatorTrainConfig(
            attention_fn=attention_fn,
            seed=seed,
            threads=threads,
            steps=steps,
            minutes=minutes,
            batch_size=batch_size,
            lr=lr,
            d_model=d_model,
            num_heads=heads,
            encoder_layers=layers,
            decoder_layers=layers,
            ffn_dim=ffn_dim,
            vocab_size=vocab_size,
            train_size=train_size,
            dev_size=dev_size,
            test_size=test_size,
            beam_size=beam_size,
            eval_every=eval_every,
        )
    except ValidationError as exc:
        raise options_error(exc, "training option") from exc
    result = train_translator(cfg, out, name=name, log=typer.echo)
    m = result.metrics
    typer.echo(
        f"wrote {result.directory}: test exact match greedy {m['test_exact_match_greedy']:.4f}, "
        f"beam {m['beam_size']} {m['test_exact_match_beam']:.4f}, chrF {m['test_chrf_beam']:.2f}; "
        f"{m['params']:,} parameters, training loop {m['train_time_s']} s, total {m['total_time_s']} s"
    )
