"""`mmserve kernels`: build and inspect the fused MultiMax kernels."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Build and inspect the fused MultiMax kernels.", no_args_is_help=True)


@app.command("info")
def info() -> None:
    """List the registered kernels per device and whether they load here."""
    from mmserve.ops import available_kernels

    typer.echo(json.dumps(available_kernels(load=True), indent=2))


@app.command("build")
def build() -> None:
    """Compile (or reuse from the cache) the fused CPU kernel; prints where it lives."""
    from mmserve.ops import available_kernels

    report = available_kernels(load=True)
    typer.echo(json.dumps(report, indent=2))
