"""`mmserve train classifier`: the bundled digits ViT (MultiMax, or the SoftMax baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .train_cmd import app


@app.command("classifier")
def classifier(
    out: Path = typer.Option(..., "--out", help="model directory to write (replaced if it exists)"),
    attention_fn: str = typer.Option("multimax", "--attention-fn", help="multimax or softmax"),
    seed: int = typer.Option(0, "--seed", help="seeds the split, the initialisation and the data order"),
    epochs: int = typer.Option(20, "--epochs"),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch intra-op threads (default: all cores)"
    ),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    embed_dim: int = typer.Option(96, "--embed-dim"),
    depth: int = typer.Option(4, "--depth"),
    heads: int = typer.Option(4, "--heads"),
    patch_size: int = typer.Option(2, "--patch-size"),
    test_fraction: float = typer.Option(0.2, "--test-fraction"),
    pen_samples: int = typer.Option(2500, "--pen-samples", help="synthetic pen-drawn digits (training stroke model)"),
    typed_samples: int = typer.Option(1500, "--typed-samples", help="synthetic typed digits (training fonts)"),
    sklearn_repeats: int = typer.Option(8, "--sklearn-repeats", help="passes over the sklearn split per epoch"),
    heldout_per_digit: Optional[int] = typer.Option(
        None, "--heldout-per-digit", help="held-out images per digit to measure after training (default: all; 0: none)"
    ),
    no_augment: bool = typer.Option(
        False, "--no-augment", help="train on the raw sklearn grids only (no synthetic digits, no augmentation)"
    ),
    name: Optional[str] = typer.Option(None, "--name", help="model name (default: the directory's name)"),
    compare_to: Optional[Path] = typer.Option(
        None, "--compare-to", help="another trained model dir whose figures the card lists alongside"
    ),
) -> None:
    """Train the digits classifier on scikit-learn's digits plus synthetic pen and typed digits; write a
    model directory whose card reports the sklearn test split and the held-out fonts and pen digits."""
    from pydantic import ValidationError

    from mmserve.errors import UserError
    from mmserve.training.classifier import ClassifierTrainConfig, train_classifier

    from .validation import options_error

    if attention_fn not in ("multimax", "softmax"):
        raise UserError(f"--attention-fn must be multimax or softmax, got {attention_fn!r}")
    try:
        cfg = ClassifierTrainConfig(
            attention_fn=attention_fn,
            seed=seed,
            epochs=epochs,
            threads=threads,
            batch_size=batch_size,
            lr=lr,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=heads,
            patch_size=patch_size,
            test_fraction=test_fraction,
            augment=not no_augment,
            pen_samples=pen_samples,
            typed_samples=typed_samples,
            sklearn_repeats=sklearn_repeats,
            heldout_per_digit=heldout_per_digit,
        )
    except ValidationError as exc:
        raise options_error(exc, "training option") from exc
    result = train_classifier(cfg, out, name=name, compare_to=compare_to, log=typer.echo)
    typer.echo(
        f"wrote {result.directory}: test accuracy {result.test_correct}/{result.test_total} = "
        f"{result.test_accuracy:.4f}, {result.params:,} parameters, training loop {result.train_time_s:.1f} s"
    )
