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
    portable: bool = typer.Option(
        True, "--portable/--no-portable",
        help="onnx: also write portable/GRAPH.onnx per graph, the MultiMax bodies inlined into standard ops, for "
        "runtimes without the mmserve domain (OpenVINO, onnx.reference, converters); --no-portable saves the "
        "disk space (each copy holds the weights again)",
    ),
    atol: Optional[float] = typer.Option(
        None, "--atol", help="onnx: absolute tolerance of the export check (default 1e-4), on top of torch float32's "
        "own error against a float64 run (see README, 'ONNX export and parity')",
    ),
    rtol: Optional[float] = typer.Option(
        None, "--rtol", help="onnx: relative tolerance of the export check (default 1e-4, times |float64 output|)",
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
    """Export MODEL_DIR; every MultiMax becomes one mmserve.MultiMax node.

    The op, its attributes, the portable copies and the export check: README.md, "ONNX export and parity".
    """
    from rich.console import Console

    from exporters.formats import resolve_format

    console = Console(stderr=True)
    exporter = resolve_format(format)
    kwargs = dict(opset=opset, function_body=not no_function_body, skip_if_current=skip_if_current,
                  progress=lambda msg: console.print(f"[dim]{msg}[/]", highlight=False))
    if format == "tensorrt":
        kwargs.update(precision=precision, batch=batch, workspace_mib=workspace_mib)
    elif format == "onnx":
        kwargs.update(portable=portable)
        kwargs.update({name: value for name, value in (("atol", atol), ("rtol", rtol)) if value is not None})
    result = exporter(model_dir, out, **kwargs)
    if result.skipped:
        typer.echo(f"{out}: {result.reason}; skipped")
        return
    for graph in result.graphs:
        checked = ""
        if getattr(graph, "validation", None):
            checked = (f", max abs err vs float64: onnxruntime {graph.worst('onnx_vs_float64'):.2e}, "
                       f"torch float32 {graph.worst('torch_vs_float64'):.2e}")
        typer.echo(f"{out / graph.filename}: {graph.multimax_nodes} mmserve.MultiMax nodes{checked}")
        if getattr(graph, "portable", None):
            typer.echo(f"{out / graph.portable}: the same graph, standard ONNX ops only")
    typer.echo(f"wrote {out} (manifest.json lists every file's sha256)")
