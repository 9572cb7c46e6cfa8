"""Model directories (config + safetensors + manifest) and importers for official checkpoints."""

from .errors import CheckpointError
from .manifest import sha256_file, verify_manifest, write_manifest
from .model_dir import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    LoadedModel,
    ModelDirConfig,
    load_model_dir,
    read_config,
    save_model_dir,
)

__all__ = [
    "CheckpointError",
    "sha256_file",
    "verify_manifest",
    "write_manifest",
    "CARD_NAME",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "LoadedModel",
    "ModelDirConfig",
    "load_model_dir",
    "read_config",
    "save_model_dir",
]
