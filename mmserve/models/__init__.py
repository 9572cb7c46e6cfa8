"""Model families. Each takes `attention_fn: multimax | softmax` so a SoftMax baseline is one switch away."""

from .registry import ModelConfig, build_model, parse_architecture
from .seq2seq import MultiMaxTranslator, TranslatorConfig
from .vit import VIT_PRESETS, MultiMaxViT, ViTConfig

__all__ = [
    "ViTConfig",
    "MultiMaxViT",
    "VIT_PRESETS",
    "TranslatorConfig",
    "MultiMaxTranslator",
    "ModelConfig",
    "build_model",
    "parse_architecture",
]
