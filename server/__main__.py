"""`python -m server ...` = `mmserve serve ...` (handy for subprocesses that have no console script)."""

import sys

import typer

from mmserve.cli.serve_cmd import serve
from mmserve.errors import UserError

if __name__ == "__main__":
    try:
        typer.run(serve)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
