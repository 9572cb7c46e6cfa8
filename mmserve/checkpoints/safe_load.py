"""Reading pickled PyTorch checkpoints without executing pickled code, shared by the importers.

`torch.load(weights_only=True)` runs torch's restricted unpickler: tensors, storages, plain
containers and the classes named in `allowed` are rebuilt, and any other global (a class, a function
such as `os.system` behind a `__reduce__`) stops the load before it is called. That is the allow-list
the importers need; this module only turns its exceptions into one-line `CheckpointError`s that name
the file and the refused class, and checks a state dict against the module it is meant for.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .errors import CheckpointError

__all__ = ["safe_torch_load", "check_state_dict"]


def safe_torch_load(path: Path, allowed: Sequence[Any], what: str) -> Any:
    """`torch.load(path, weights_only=True)` with the extra classes `allowed`; errors name the file.

    `what` describes the expected file for messages ("an official MultiMax ViT checkpoint, .pth").
    """
    if not path.is_file():
        raise CheckpointError(path, f"not found (expected {what})")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "empty file: not a PyTorch checkpoint")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused is None:  # not a pickle at all: garbage or a different file type
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[-1] if lines else "")
            raise CheckpointError(
                path, f"not a readable PyTorch checkpoint (invalid pickle data: {detail})"
            ) from exc
        raise CheckpointError(
            path,
            f"refused by torch.load(weights_only=True): it pickles the Python object {refused.group(1)}, "
            "not only tensors and plain containers (e.g. a whole nn.Module was saved). Loading it would run "
            "arbitrary code; save `model.state_dict()` instead, where you trust the file.",
        ) from exc
    except Exception as exc:  # not a zip / legacy pickle, truncated, random bytes
        raise CheckpointError(
            path, f"not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc


def check_state_dict(path: Path, model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Refuse (naming keys and shapes) a state dict that does not fit `model` exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(
            f"missing keys {missing[:6]}" + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        )
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:6]}"
            + (f" and {len(unexpected) - 6} more" if len(unexpected) > 6 else "")
        )
    for key, tensor in expected.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            problems.append(
                f"key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
    for key, tensor in state.items():
        if key in expected and not tensor.is_floating_point():
            problems.append(f"key {key!r} has dtype {tensor.dtype}, expected floating point")
    if problems:
        raise CheckpointError(path, f"does not match {what}: " + "; ".join(problems[:8]))
