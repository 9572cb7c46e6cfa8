"""`mmserve export`: a model directory -> deployable files (ONNX now; TensorRT via its own helper)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def export(
    model_dir: Path = typer.Argument(..., help="mmserve model directory (config.json + model.safetensors)"),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx | tensorrt"),
    out: Path = typer.Option(..., "--out", "-o", help="export directory to write (replaced atomically)"),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 18, minimum 18)"),
    no_function_body: bool = typer.Option(
        False, "--no-function-body",
        help="leave out the MultiMax function bodies (for runtimes with a MultiMax plugin kernel, e.g. TensorRT); "
        "stock onnxruntime cannot run such a graph",
    ),
    skip_if_current: bool = typer.Option(
        False, "--skip-if-current",
        help="do nothing when OUT's manifest says it was exported from the same weights and config with the "
        "same options and exporter versions, and every file still verifies",
    ),
    precision: str = typer.Option("fp32,fp16", "--precision", help="tensorrt: engines to build (fp32, fp16; comma-separated)"),
    batch: Optional[str] = typer.Option(
        None, "--batch", help="tensorrt: MIN,OPT,MAX batch of the optimisation profile (default 1,8,32; translator 1,16,128)"
    ),
    workspace_mib: int = typer.Option(1024, "--workspace-mib", help="tensorrt: builder workspace limit in MiB"),
) -> None:
    """Export MODEL_DIR; every MultiMax becomes one mmserve.MultiMax node (see DESIGN.md)."""
    from rich.console import Console

    from exporters.formats import resolve_format

    console = Console(stderr=True)
    exporter = resolve_format(format)
    kwargs = dict(opset=opset, function_body=not no_function_body, skip_if_current=skip_if_current,
                  progress=lambda msg: console.print(f"[dim]{msg}[/]", highlight=False))
    if format == "tensorrt":
        kwargs.update(precision=precision, batch=batch, workspace_mib=workspace_mib)
    result = exporter(model_dir, out, **kwargs)
    if result.skipped:
        typer.echo(f"{out}: {result.reason}; skipped")
        return
    for graph in result.graphs:
        errors = getattr(graph, "validation_max_abs_err", {}) or {}
        worst = f", onnxruntime vs torch max abs err {max(errors.values()):.2e}" if errors else ""
        typer.echo(f"{out / graph.filename}: {graph.multimax_nodes} mmserve.MultiMax nodes{worst}")
    typer.echo(f"wrote {out} (manifest.json lists every file's sha256)")
