"""`mmserve parity`: the same model on several backends, compared on the same inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

_HELP = """Run MODEL_DIR on every backend with the same inputs and compare (exit 1 on a failed check).

Inputs: the model's own held-out data (digits / numbers test split) when its config names that dataset, plus seeded random inputs, each cut into every batch size. Classifiers: max abs / rel error of probs and logits, top-1 agreement. Translators: max abs / rel error of teacher-forced step logits, token agreement and exact match of greedy and beam outputs, and agreement with the references.

Fails when |a - b| > atol + rtol*|b| + 4*e32 for any compared value (e32: torch float32's own max error against a float64 run on the same inputs, so sharp models are judged against float32 rounding), or when a held-out decision differs (classifier top-1 beyond --tie-margin; any greedy or beam token).

Default tolerances, per dtype of the lower-precision backend of a pair: float32 atol 1e-4 rtol 1e-4; tfloat32 atol 1e-3 rtol 1e-3; float16 atol 1e-2 rtol 1e-2; bfloat16 atol 5e-2 rtol 5e-2.

Backends: torch (eager float32), onnxruntime (the custom-node graphs, bodies inlined by onnxruntime), onnx-reference (the custom-node graphs on ONNX's reference evaluator, slow), openvino (the portable graphs, portable/*.onnx), tensorrt / tensorrt-fp16. Backends that cannot run here (tensorrt or openvino without the package) are SKIPPED and never counted as passed.
"""


def _ints(text: str, what: str) -> list[int]:
    from mmserve.errors import UserError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from exc
    if not values:
        raise UserError(f"{what}: empty")
    return values


def parity(
    model_dir: Path = typer.Argument(..., help="mmserve model directory (the torch reference)"),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="ONNX export of MODEL_DIR (default: export to a temp dir)"),
    backends: str = typer.Option("torch,onnxruntime", "--backends", help="comma-separated: torch,onnxruntime[,onnx-reference,openvino,tensorrt,tensorrt-fp16]"),
    batch_sizes: str = typer.Option("1,4,16", "--batch-sizes", help="comma-separated batch sizes"),
    samples: Optional[int] = typer.Option(None, "--samples", help="held-out and random samples (default: largest batch size)"),
    atol: Optional[str] = typer.Option(None, "--atol", help="absolute tolerance: '2e-4' (float32) or 'float32=2e-4,float16=2e-2'"),
    rtol: Optional[str] = typer.Option(None, "--rtol", help="relative tolerance, same syntax as --atol"),
    tie_margin: float = typer.Option(1e-4, "--tie-margin", help="classifier top-1 flips below this reference margin are ties"),
    threads: int = typer.Option(0, "--threads", help="intra-op threads for torch and onnxruntime (0 = default)"),
    providers: Optional[str] = typer.Option(None, "--providers", help="onnxruntime providers: cpu (default), auto, or names"),
    seed: int = typer.Option(0, "--seed", help="seed of the random inputs"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the full report as JSON"),
    require_all: bool = typer.Option(False, "--require-all", help="fail when a requested backend was skipped"),
) -> None:
    from rich.console import Console

    from exporters.parity import parse_tolerances, run_parity
    from exporters.parity_report import render_report

    # CI logs are not terminals: give the tables room instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 160)
    errs = Console(stderr=True)
    provider_arg = None
    if providers:
        provider_arg = providers if providers in ("cpu", "auto") else [p.strip() for p in providers.split(",")]
    report = run_parity(
        model_dir,
        backends=[b.strip() for b in backends.split(",") if b.strip()],
        onnx_dir=onnx,
        batch_sizes=_ints(batch_sizes, "--batch-sizes"),
        samples=samples,
        tolerances=parse_tolerances(atol, rtol),
        tie_margin=tie_margin,
        threads=threads,
        providers=provider_arg,
        seed=seed,
        progress=lambda msg: errs.print(f"[dim]{msg}[/]", highlight=False),
    )
    render_report(report, console)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    failed = not report.passed or (require_all and report.skipped)
    if failed:
        sys.exit(1)


parity.__doc__ = _HELP
