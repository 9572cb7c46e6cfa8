"""Architecture config -> nn.Module, for every model family (dispatch on the `family` field)."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter
from torch import nn

from .seq2seq import MultiMaxTranslator, TranslatorConfig
from .vit import MultiMaxViT, ViTConfig

__all__ = ["ModelConfig", "build_model", "parse_architecture"]

ModelConfig = Union[ViTConfig, TranslatorConfig]

_BUILDERS: dict[str, type[nn.Module]] = {"vit": MultiMaxViT, "seq2seq": MultiMaxTranslator}


def parse_architecture(data: dict[str, Any]) -> ModelConfig:
    """Validate an `architecture` dict from config.json into the family's config class."""
    family = data.get("family")
    if family == "vit":
        return ViTConfig.model_validate(data)
    if family == "seq2seq":
        return TranslatorConfig.model_validate(data)
    raise ValueError(f"unknown model family {family!r} (known: {sorted(_BUILDERS)})")


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the nn.Module for an architecture config (weights freshly initialised)."""
    return _BUILDERS[config.family](config)
