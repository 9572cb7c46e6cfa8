"""Per-task export configs in the Optimum style: one `OnnxConfig` per graph.

An OnnxConfig declares a graph's inputs and outputs (ordered, with their dynamic axes), the module
that computes it (wrappers.py) and how to make dummy inputs: small ones to trace with (every
dynamic dim >= 2, so torch.export does not specialise it) and differently shaped ones to validate
the dynamic axes with. A task maps to the list of graphs its export directory holds:

    image-classification  model.onnx (pixel_values -> probs, logits)
                          explain.onnx (... + attention_weights_{i} per block, for attention rollout)
    translation           encoder.onnx (src_ids, src_pad_mask -> memory)
                          cross_kv.onnx (memory -> cross_key_{i}, cross_value_{i})
                          decoder.onnx (one decode_step; a cache of length 0 is the first step)

New tasks register with `register_onnx_configs`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from .convert import AUTO_DIM, GraphSpec
from .wrappers import ClassifierExplainGraph, ClassifierGraph, CrossKVGraph, DecoderGraph, EncoderGraph

__all__ = [
    "OnnxConfig",
    "ImageClassificationOnnxConfig",
    "ImageClassificationExplainOnnxConfig",
    "Seq2SeqEncoderOnnxConfig",
    "Seq2SeqCrossKVOnnxConfig",
    "Seq2SeqDecoderOnnxConfig",
    "TASK_CONFIGS",
    "register_onnx_configs",
    "onnx_configs_for",
    "decoder_io_names",
]

Shapes = dict[str, int]


class OnnxConfig(ABC):
    """Describes one ONNX graph of a model: names, dynamic axes, dummy inputs, the module to trace."""

    filename: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, model: nn.Module, architecture: Any) -> None:
        self.model = model
        self.architecture = architecture

    @property
    @abstractmethod
    def inputs(self) -> list[tuple[str, dict[int, str]]]:
        """Ordered (name, {axis: dim name}) of the graph inputs."""

    @property
    @abstractmethod
    def outputs(self) -> list[tuple[str, dict[int, str]]]:
        """Ordered (name, {axis: dim name}) of the graph outputs."""

    @abstractmethod
    def graph_module(self) -> nn.Module:
        """The module whose forward(*inputs) returns the outputs in order."""

    @abstractmethod
    def generate_dummy_inputs(self, shapes: Shapes, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Inputs in order for the given dim sizes (batch, sequence lengths)."""

    export_shapes: ClassVar[Shapes]
    """Dims used for tracing: all >= 2 (torch.export specialises 0 and 1)."""
    validation_shapes: ClassVar[list[Shapes]]
    """Other dims checked after export (batch 1, other lengths) so a baked-in size fails loudly."""

    def spec(self) -> GraphSpec:
        return GraphSpec(self.inputs, self.outputs)


# ------------------------------------------------------------------------ image classification


class ImageClassificationOnnxConfig(OnnxConfig):
    filename = "model.onnx"
    description = "pixel_values [batch, C, H, W] -> probs (MultiMax) and logits (modulated), [batch, classes]"
    export_shapes = {"batch": 2}
    validation_shapes = [{"batch": 1}, {"batch": 3}]

    @property
    def inputs(self):
        return [("pixel_values", {0: "batch"})]

    @property
    def outputs(self):
        return [("probs", {0: "batch"}), ("logits", {0: "batch"})]

    def graph_module(self) -> nn.Module:
        return ClassifierGraph(self.model)

    def generate_dummy_inputs(self, shapes, generator):
        arch = self.architecture
        size = (shapes["batch"], arch.in_chans, arch.img_size, arch.img_size)
        return (torch.randn(size, generator=generator),)


class ImageClassificationExplainOnnxConfig(ImageClassificationOnnxConfig):
    filename = "explain.onnx"
    description = "model.onnx plus attention_weights_{i} [batch, heads, tokens, tokens] per block"

    @property
    def outputs(self):
        weights = [(f"attention_weights_{i}", {0: "batch"}) for i in range(self.architecture.depth)]
        return super().outputs + weights

    def graph_module(self) -> nn.Module:
        return ClassifierExplainGraph(self.model)


# ----------------------------------------------------------------------------------- translation


def decoder_io_names(num_layers: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """(past names, cross names, present names, fixed input names) of the decoder graph."""
    past = [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    cross = [f"cross_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    fixed = ["tokens", "positions", "self_pad_mask", "src_pad_mask"]
    return past, cross, present, fixed


def _src(shapes: Shapes, generator: torch.Generator, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources: the first row full, later rows shorter, so the mask is exercised."""
    batch, length = shapes["batch"], shapes["src"]
    ids = torch.randint(4, vocab, (batch, length), generator=generator)
    lengths = torch.tensor([max(1, length - i) for i in range(batch)])
    pad = torch.arange(length)[None, :] >= lengths[:, None]
    return ids.masked_fill(pad, 0), pad


class _TranslatorConfig(OnnxConfig):
    @property
    def _kv_shape(self) -> tuple[int, int]:
        arch = self.architecture
        return arch.num_heads, arch.d_model // arch.num_heads


class Seq2SeqEncoderOnnxConfig(_TranslatorConfig):
    filename = "encoder.onnx"
    description = "src_ids [batch, src], src_pad_mask [batch, src] (True = pad) -> memory [batch, src, d_model]"
    export_shapes = {"batch": 2, "src": 5}
    validation_shapes = [{"batch": 1, "src": 3}, {"batch": 3, "src": 9}]

    @property
    def inputs(self):
        return [("src_ids", {0: "batch", 1: "src"}), ("src_pad_mask", {0: "batch", 1: "src"})]

    @property
    def outputs(self):
        return [("memory", {0: "batch", 1: "src"})]

    def graph_module(self) -> nn.Module:
        return EncoderGraph(self.model)

    def generate_dummy_inputs(self, shapes, generator):
        return _src(shapes, generator, self.architecture.src_vocab_size)


class Seq2SeqCrossKVOnnxConfig(_TranslatorConfig):
    filename = "cross_kv.onnx"
    description = "memory [batch, src, d_model] -> cross_key_{i}, cross_value_{i} [batch, heads, src, head_dim]"
    export_shapes = {"batch": 2, "src": 5}
    validation_shapes = [{"batch": 1, "src": 3}, {"batch": 3, "src": 9}]

    @property
    def inputs(self):
        return [("memory", {0: "batch", 1: "src"})]

    @property
    def outputs(self):
        _, cross, _, _ = decoder_io_names(self.architecture.decoder_layers)
        return [(name, {0: "batch", 2: "src"}) for name in cross]

    def graph_module(self) -> nn.Module:
        return CrossKVGraph(self.model)

    def generate_dummy_inputs(self, shapes, generator):
        return (torch.randn(shapes["batch"], shapes["src"], self.architecture.d_model, generator=generator),)


class Seq2SeqDecoderOnnxConfig(_TranslatorConfig):
    filename = "decoder.onnx"
    description = (
        "tokens/positions [batch, tokens], self_pad_mask [batch, past+tokens], src_pad_mask [batch, src], "
        "past_* [batch, heads, past, head_dim] (past may be 0), cross_* -> logits [batch, tokens, vocab], "
        "present_* [batch, heads, past+tokens, head_dim]"
    )
    export_shapes = {"batch": 2, "tokens": 3, "past": 4, "src": 5}
    validation_shapes = [
        {"batch": 1, "tokens": 1, "past": 0, "src": 3},
        {"batch": 3, "tokens": 1, "past": 6, "src": 7},
        {"batch": 2, "tokens": 4, "past": 0, "src": 6},
    ]

    @property
    def inputs(self):
        past, cross, _, _ = decoder_io_names(self.architecture.decoder_layers)
        return [
            ("tokens", {0: "batch", 1: "tokens"}),
            ("positions", {0: "batch", 1: "tokens"}),
            ("self_pad_mask", {0: "batch", 1: AUTO_DIM + "past_and_tokens"}),
            ("src_pad_mask", {0: "batch", 1: "src"}),
            *[(name, {0: "batch", 2: "past"}) for name in past],
            *[(name, {0: "batch", 2: "src"}) for name in cross],
        ]

    @property
    def outputs(self):
        _, _, present, _ = decoder_io_names(self.architecture.decoder_layers)
        return [("logits", {0: "batch", 1: "tokens"}), *[(name, {0: "batch"}) for name in present]]

    def graph_module(self) -> nn.Module:
        return DecoderGraph(self.model, self.architecture.decoder_layers)

    def generate_dummy_inputs(self, shapes, generator):
        arch = self.architecture
        batch, new, past, src = shapes["batch"], shapes["tokens"], shapes["past"], shapes["src"]
        heads, head_dim = self._kv_shape
        tokens = torch.randint(4, arch.tgt_vocab_size, (batch, new), generator=generator)
        # Rows with different real history: row i has i left-padded cache slots.
        pad_slots = torch.tensor([min(i, past) for i in range(batch)])
        self_pad = torch.arange(past + new)[None, :] < pad_slots[:, None]
        positions = (torch.arange(past, past + new)[None, :] - pad_slots[:, None]).clamp(min=0)
        _, src_pad = _src({"batch": batch, "src": src}, generator, arch.src_vocab_size)
        layers = arch.decoder_layers
        past_kv = [torch.randn(batch, heads, past, head_dim, generator=generator) for _ in range(2 * layers)]
        cross_kv = [torch.randn(batch, heads, src, head_dim, generator=generator) for _ in range(2 * layers)]
        return (tokens, positions, self_pad, src_pad, *past_kv, *cross_kv)


TASK_CONFIGS: dict[str, list[type[OnnxConfig]]] = {
    "image-classification": [ImageClassificationOnnxConfig, ImageClassificationExplainOnnxConfig],
    "translation": [Seq2SeqEncoderOnnxConfig, Seq2SeqCrossKVOnnxConfig, Seq2SeqDecoderOnnxConfig],
}


def register_onnx_configs(task: str, configs: list[type[OnnxConfig]]) -> None:
    """Declare the graphs a task's export directory holds (a new task is one call)."""
    TASK_CONFIGS[task] = list(configs)


def onnx_configs_for(task: str, model: nn.Module, architecture: Any) -> list[OnnxConfig]:
    """The OnnxConfigs of a task, bound to a model."""
    if task not in TASK_CONFIGS:
        raise KeyError(f"no ONNX export configs for task {task!r} (known: {sorted(TASK_CONFIGS)})")
    return [cls(model, architecture) for cls in TASK_CONFIGS[task]]
