"""Model families. Each takes `attention_fn: multimax | softmax` so a SoftMax baseline is one switch away."""

from .registry import ModelConfig, build_model, parse_architecture
from .vit import VIT_PRESETS, MultiMaxViT, ViTConfig

__all__ = ["ViTConfig", "MultiMaxViT", "VIT_PRESETS", "ModelConfig", "build_model", "parse_architecture"]
