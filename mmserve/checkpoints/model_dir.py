"""The mmserve model directory: config.json, model.safetensors, side files, README.md, manifest.json.

    config.json        format, task, architecture, labels or tokenizer, preprocessing, generation,
                       dataset (name + split recipe, so held-out data can be regenerated), metrics, source
    model.safetensors  weights (no pickle anywhere)
    tokenizer.json     translator vocabulary (tokenizers library format), when the task needs one
    README.md          the model card: data, split, figures, the command that made it
    manifest.json      sha256 of every other file, verified on load
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from mmserve.models import ModelConfig, build_model, parse_architecture

from .errors import CheckpointError
from .manifest import verify_manifest, write_manifest

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "ModelDirConfig",
    "LoadedModel",
    "save_model_dir",
    "load_model_dir",
    "read_config",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "mmserve-model"
Task = Literal["image-classification", "translation"]


class ModelDirConfig(BaseModel):
    """Everything besides the weights that serving, export and parity need to use a model."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["mmserve-model"] = FORMAT
    format_version: Literal[1] = 1
    name: str = Field(min_length=1)
    task: Task
    architecture: dict[str, Any]
    labels: Optional[list[str]] = None
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    tokenizer: Optional[str] = None
    generation: dict[str, Any] = Field(default_factory=dict)
    dataset: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    source: dict[str, Any] = Field(default_factory=dict)

    def model_architecture(self) -> ModelConfig:
        """The validated architecture config of the model family."""
        return parse_architecture(self.architecture)


@dataclass
class LoadedModel:
    """A verified model directory, its config and the model in eval mode."""

    directory: Path
    config: ModelDirConfig
    architecture: ModelConfig
    model: nn.Module
    manifest: dict[str, Any]

    @property
    def weights_sha256(self) -> str:
        return self.manifest["files"][WEIGHTS_NAME]


def read_config(directory: Path | str) -> ModelDirConfig:
    """Parse and validate config.json of a model directory (no weights loaded, no hashes checked)."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise CheckpointError(directory, "not a directory (expected an mmserve model directory)")
    if not path.is_file():
        raise CheckpointError(path, "missing: not an mmserve model directory")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON ({exc})") from exc
    try:
        config = ModelDirConfig.model_validate(data)
        config.model_architecture()
    except (ValidationError, ValueError) as exc:
        raise CheckpointError(path, f"invalid config: {exc}") from exc
    return config


def save_model_dir(
    directory: Path | str,
    model: nn.Module,
    config: ModelDirConfig,
    side_files: Optional[dict[str, Path | str | bytes]] = None,
    card: Optional[str] = None,
) -> Path:
    """Write a complete model directory atomically (built in a temp dir, then moved into place)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / CONFIG_NAME).write_text(json.dumps(config.model_dump(), indent=2) + "\n")
        save_model(model, str(staging / WEIGHTS_NAME))
        for name, content in (side_files or {}).items():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"side file name {name!r} must be a relative path inside the model directory")
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        if card is not None:
            (staging / CARD_NAME).write_text(card)
        write_manifest(staging)
        _make_readable(staging)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _make_readable(directory: Path) -> None:
    """Published artefacts are world-readable: mkdtemp creates 0700 and safetensors writes 0600 files,
    which would lock out a server running as another user."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def load_model_dir(directory: Path | str, device: str | torch.device = "cpu", verify: bool = True) -> LoadedModel:
    """Verify the manifest, read the config, build the model and load its safetensors weights."""
    directory = Path(directory)
    config = read_config(directory)
    manifest = verify_manifest(directory) if verify else {"files": {}}
    architecture = config.model_architecture()
    model = build_model(architecture)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(weights, "missing")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(weights, f"cannot be read as safetensors weights for this architecture: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(
            weights, f"does not match config.json's architecture (missing keys: {sorted(missing)[:5]}, "
            f"unexpected keys: {sorted(unexpected)[:5]})"
        )
    model.to(device).eval()
    return LoadedModel(directory, config, architecture, model, manifest)
