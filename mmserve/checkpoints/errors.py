"""Errors raised while reading model directories and checkpoints: each names the file and the problem."""

from __future__ import annotations

from pathlib import Path

from mmserve.errors import UserError

__all__ = ["CheckpointError"]


class CheckpointError(UserError):
    """A model directory or checkpoint file is missing, corrupt, tampered with or of the wrong layout."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
