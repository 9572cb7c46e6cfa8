"""Architecture config -> nn.Module, for every model family (dispatch on the `family` field)."""

from __future__ import annotations

from typing import Any, Union

from torch import nn

from .seq2seq import MultiMaxTranslator, TranslatorConfig
from .vit import MultiMaxViT, ViTConfig

__all__ = ["ModelConfig", "build_model", "parse_architecture"]

ModelConfig = Union[ViTConfig, TranslatorConfig]

# family -> (config class, module class): one table serves parsing and building.
_FAMILIES: dict[str, tuple[type[ModelConfig], type[nn.Module]]] = {
    "vit": (ViTConfig, MultiMaxViT),
    "seq2seq": (TranslatorConfig, MultiMaxTranslator),
}


def parse_architecture(data: dict[str, Any]) -> ModelConfig:
    """Validate an `architecture` dict from config.json into the family's config class."""
    family = data.get("family")
    if not isinstance(family, str) or family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r} (known: {sorted(_FAMILIES)})")
    return _FAMILIES[family][0].model_validate(data)


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the nn.Module for an architecture config (weights freshly initialised)."""
    return _FAMILIES[config.family][1](config)
