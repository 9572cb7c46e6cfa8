"""`mmserve kernels`: build and inspect the fused MultiMax kernels.

    mmserve kernels build   compile the C++ CPU kernel now (or reuse the cached build) and say where it is
    mmserve kernels info    which kernels are registered per device and whether they load here
    mmserve kernels clean   delete the CPU kernel build cache
"""

from __future__ import annotations

import json
import shutil

import typer

app = typer.Typer(help="Build and inspect the fused MultiMax kernels.", no_args_is_help=True)


@app.command("info")
def info() -> None:
    """List the registered kernels and attention paths per device and whether they load here."""
    from mmserve.ops import available_kernels
    from mmserve.ops.attention import _attention_impls
    from mmserve.ops.cpu_kernel import _attention_state, fused_attention_available

    report: dict[str, object] = {"row_kernels": available_kernels(load=True)}
    report["attention_impls"] = {device: [name for name, _, _ in impls] for device, impls in _attention_impls.items()}
    report["cpu_fused_attention"] = {
        "available": fused_attention_available(),
        "error": _attention_state.get("error"),
    }
    typer.echo(json.dumps(report, indent=2))


@app.command("build")
def build(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the compiler commands."),
    allow_failure: bool = typer.Option(
        False, "--allow-failure", help="Exit 0 when the kernel cannot be built (the op then uses the reference)."
    ),
) -> None:
    """Compile (or reuse from the cache) the fused CPU kernel; prints where it lives."""
    from mmserve.ops.cpu_kernel import build as build_kernel
    from mmserve.ops.cpu_kernel import cache_root

    try:
        result = build_kernel(verbose=verbose)
    except Exception as exc:  # a missing compiler/ninja is reported, not a traceback
        typer.echo(f"CPU kernel not built: {type(exc).__name__}: {exc}", err=True)
        typer.echo(f"(cache: {cache_root()}; multimax falls back to the PyTorch reference)", err=True)
        raise typer.Exit(0 if allow_failure else 1)
    state = "built" if result.compiled_now else "reused cached build"
    typer.echo(f"CPU kernel {state} in {result.seconds:.1f} s: {result.library}")
    typer.echo(json.dumps(result.to_dict(), indent=2))


@app.command("clean")
def clean() -> None:
    """Delete the CPU kernel build cache (the next use rebuilds it)."""
    from mmserve.ops.cpu_kernel import cache_root

    root = cache_root()
    if root.exists():
        shutil.rmtree(root)
        typer.echo(f"removed {root}")
    else:
        typer.echo(f"nothing to remove at {root}")
