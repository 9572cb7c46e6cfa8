"""The rich tables `mmserve parity` prints (kept apart from the checks, which return plain data)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .onnx.validate import FLOAT32_ERROR_FACTOR
from .parity import ParityReport

__all__ = ["render_report"]

_CLASSIFIER_COLUMNS = [
    ("probs_max_abs", "probs max abs", "{:.2e}"),
    ("logits_max_abs", "logits max abs", "{:.2e}"),
    ("logits_max_rel", "logits max rel", "{:.2e}"),
    ("logits_float32_error", "logits f32 vs f64", "{:.2e}"),
    ("top1_agreement", "top-1 agree", "{:.4f}"),
]
_TRANSLATOR_COLUMNS = [
    ("logits_max_abs", "step logits max abs", "{:.2e}"),
    ("logits_max_rel", "max rel", "{:.2e}"),
    ("logits_float32_error", "f32 vs f64", "{:.2e}"),
    ("greedy_token_agreement", "greedy tok agree", "{:.4f}"),
    ("greedy_exact_match", "greedy exact", "{:.4f}"),
    ("beam_token_agreement", "beam tok agree", "{:.4f}"),
    ("beam_exact_match", "beam exact", "{:.4f}"),
]


def render_report(report: ParityReport, console: Console) -> None:
    console.print(f"[bold]parity[/] {report.model_dir} ({report.task})", highlight=False)
    for name, description in report.backends.items():
        console.print(f"  {name}: {description}", highlight=False)
    for name, reason in report.skipped.items():
        console.print(f"  [yellow]{name}: SKIPPED, not compared and not counted as passed: {reason}[/]", highlight=False)
    tol = ", ".join(f"{d} atol {t.atol:g} rtol {t.rtol:g}" for d, t in report.tolerances.items())
    console.print(f"  tolerances: {tol}, each plus {FLOAT32_ERROR_FACTOR:g}x torch float32's own error vs float64 "
                  f"(column f32 vs f64); samples per input kind: {report.samples}", highlight=False)

    columns = _CLASSIFIER_COLUMNS if report.task == "image-classification" else _TRANSLATOR_COLUMNS
    table = Table(title="backend pairs", show_lines=False)
    for header in ["batch", "inputs", "pair", *[c[1] for c in columns], "atol/rtol", "status"]:
        table.add_column(header, justify="right" if header not in ("inputs", "pair", "status") else "left")
    for row in report.pairs:
        status = "[green]ok[/]" if row.passed else "[red]FAIL: " + "; ".join(row.failures) + "[/]"
        table.add_row(
            str(row.batch_size), row.inputs, " vs ".join(row.pair),
            *[fmt.format(row.metrics[key]) for key, _, fmt in columns],
            f"{row.tolerance.atol:g}/{row.tolerance.rtol:g}", status,
        )
    console.print(table)

    if report.references:
        ref = Table(title="agreement with the held-out references")
        keys = list(report.references[0].metrics)
        for header in ["backend", "batch", *[k.replace("_", " ") for k in keys]]:
            ref.add_column(header, justify="left" if header == "backend" else "right")
        for r in report.references:
            ref.add_row(r.backend, str(r.batch_size), *[f"{r.metrics[k]:.4f}" for k in keys])
        console.print(ref)
    verdict = "[bold green]PASSED[/]" if report.passed else "[bold red]FAILED[/]"
    skipped = f" ({len(report.skipped)} backend(s) skipped)" if report.skipped else ""
    console.print(f"{verdict}{skipped}")
