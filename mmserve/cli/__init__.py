"""The `mmserve` command line: train, import, export, parity, serve, ray-config, kernels.

Each command lives in its own module; heavy imports (torch models, onnx, the server) happen inside
the commands so `mmserve --help` stays fast. Errors that are the user's to fix (`UserError`) print one
line naming the file and the problem and exit with status 2.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from mmserve.errors import UserError

__all__ = ["app", "main"]

app = typer.Typer(
    name="mmserve",
    help="MultiMax models from checkpoint to production: train, import, export, check parity, serve, translate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_stderr = Console(stderr=True)


def _register_commands() -> None:
    """Attach every subcommand; each module keeps its heavy imports inside the command body."""
    from . import export_cmd, import_cmd, kernels_cmd, parity_cmd, ray_cmd, serve_cmd, train_cmd, translate_cmd

    app.command("serve")(serve_cmd.serve)
    app.command("ray-config")(ray_cmd.ray_config)
    app.command("export")(export_cmd.export)
    app.command("parity")(parity_cmd.parity)
    app.command("translate")(translate_cmd.translate)
    app.add_typer(train_cmd.app, name="train")
    app.add_typer(import_cmd.app, name="import")
    app.add_typer(kernels_cmd.app, name="kernels")


_register_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="mmserve")
    except UserError as exc:
        _stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
