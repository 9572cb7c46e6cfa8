"""Which models a server holds: the model repository, explicit model directories, per-model settings.

Like Triton's model repository, a directory whose subdirectories are models: each one an mmserve model
directory or an ONNX export of one (both carry `config.json`, whose `name` and `task` identify the
model). A model directory may hold `serving.json`, this model's serving settings, which override the
server's defaults (Triton's per-model `config.pbtxt`, reduced to what mmserve's batchers take).

Reading is cheap (JSON only, no weights): a broken directory becomes a `ModelSpec` with an `error`,
reported in /v1/models, instead of an exception that would take the other models down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ModelServing", "ModelSpec", "SERVING_FILE", "read_model_spec", "scan_repository", "TASKS"]

SERVING_FILE = "serving.json"
TASKS = ("image-classification", "translation")


class ModelServing(BaseModel):
    """`serving.json`: this model's serving settings; a field left out keeps the server's default."""

    model_config = ConfigDict(extra="forbid")

    backend: Optional[str] = Field(None, description="torch | onnxruntime | any registered backend")
    device: Optional[str] = Field(None, pattern=r"^(cpu|cuda(:\d+)?)$")
    max_batch_size: Optional[int] = Field(None, ge=1, le=4096)
    max_queue_delay_ms: Optional[float] = Field(None, ge=0, le=10_000)
    max_queue_size: Optional[int] = Field(None, ge=1)
    queue_timeout_s: Optional[float] = Field(None, gt=0)
    max_batch_tokens: Optional[int] = Field(None, ge=16, description="translators: token budget per step")


@dataclass
class ModelSpec:
    """One model the server was asked to hold: where it is, what it is, and how to serve it.
    `error` is set (and nothing else trusted) when the directory cannot be served."""

    name: str
    path: Path
    task: Optional[str] = None
    serving: ModelServing = field(default_factory=ModelServing)
    error: Optional[str] = None
    from_repository: bool = False


def read_model_spec(path: Path, from_repository: bool = False) -> ModelSpec:
    """The spec of one model directory; never raises (a problem is the spec's `error`)."""
    from mmserve.checkpoints import read_config
    from mmserve.errors import UserError

    path = Path(path)
    spec = ModelSpec(name=path.name, path=path, from_repository=from_repository)
    try:
        config = read_config(path)
    except (UserError, OSError) as exc:
        spec.error = str(exc)
        return spec
    spec.name, spec.task = config.name, config.task
    if config.task not in TASKS:
        spec.error = f"{path}: task {config.task!r} is not served (served tasks: {', '.join(TASKS)})"
        return spec
    serving = path / SERVING_FILE
    if serving.is_file():
        try:
            spec.serving = ModelServing.model_validate(json.loads(serving.read_text()))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            spec.error = f"{serving}: not valid JSON ({exc})"
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors())
            spec.error = f"{serving}: {problems}"
    return spec


def scan_repository(repository: Path) -> list[ModelSpec]:
    """Every subdirectory of the repository, sorted by name (hidden ones skipped)."""
    return [read_model_spec(child, from_repository=True)
            for child in sorted(Path(repository).iterdir()) if child.is_dir() and not child.name.startswith(".")]
