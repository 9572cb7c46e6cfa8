"""`mmserve train`: train the bundled model families. Each family's command lives in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(help="Train a MultiMax model (digits classifier, numbers translator).", no_args_is_help=True)

# Family commands register themselves on `app` when imported (one import line per family below).
from . import train_classifier_cmd  # noqa: E402,F401  (registers `classifier`)
from . import train_translator_cmd  # noqa: E402,F401  (registers `translator`)
