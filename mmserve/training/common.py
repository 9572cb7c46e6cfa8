"""Pieces every training loop shares: seeding, thread settings, LR schedule, progress bars, the command line.

Training is reproducible on the same machine and torch version: everything random is seeded from one
integer and data order comes from a seeded generator, never from global state.
"""

from __future__ import annotations

import math
import os
import random
import shlex
import sys
from typing import Optional

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["seed_everything", "configure_threads", "cosine_to_floor", "warmup_cosine", "training_progress", "invoked_command"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a dedicated generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def configure_threads(threads: Optional[int]) -> int:
    """Pin torch's intra-op threads (default: all cores) so timings and results are repeatable."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def cosine_to_floor(progress: float, floor: float) -> float:
    """Cosine decay from 1 to `floor` as `progress` goes from 0 to 1 (clamped at 1)."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, floor: float = 0.02):
    """Linear warm-up then cosine decay to `floor` x the base learning rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return cosine_to_floor((step - warmup_steps) / max(1, total_steps - warmup_steps), floor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_progress(transient: bool = False, enabled: bool = True, console=None) -> Progress:
    """A rich progress bar with step counts, elapsed and remaining time, and a free-text status field.

    `enabled=False` gives the same object drawing nothing, so tests and library callers use one code path.
    `console` picks the stream (a `rich.console.Console(stderr=True)` when stdout carries results).
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        transient=transient,
        disable=not enabled,
        console=console,
    )


def invoked_command() -> str:
    """The command line that is running, for model cards ("the command that made it")."""
    program = os.path.basename(sys.argv[0]) if sys.argv else "mmserve"
    return shlex.join([program, *sys.argv[1:]])
