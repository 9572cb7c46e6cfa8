"""nn.Modules that expose exactly one ONNX graph each, with flat tensor inputs and outputs.

The exporter traces these instead of the models so that the graphs mirror the public model API
(`classify`, the seq2seq step API) and nothing else: every graph computes what the torch path
computes, through the same methods, so parity is a property of the export and not of a second
implementation. Attention runs on the eager path (the only one that emits `mmserve::multimax`; a
fused attention registered for the CPU would otherwise be traced instead).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ClassifierGraph", "ClassifierExplainGraph", "EncoderGraph", "CrossKVGraph", "DecoderGraph"]


def _eager(model: nn.Module) -> nn.Module:
    setter = getattr(model, "set_attention_impl", None)
    if setter is not None:
        setter("eager")
    return model.eval()


class ClassifierGraph(nn.Module):
    """pixel_values -> (probs, logits), i.e. `MultiMaxViT.classify`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = _eager(model)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.classify(pixel_values)


class ClassifierExplainGraph(nn.Module):
    """pixel_values -> (probs, logits, attention weights of block 0, 1, ...).

    Built from the ViT's public pieces (`patch_embed`, blocks with `return_weights`, `norm`,
    `head_scores`, `normalize_scores`, `modulate`) so that the probabilities come from the same one
    MultiMax op as `classify` while each block also returns its weights for attention rollout.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = _eager(model)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        x = model.pos_drop(model.patch_embed(pixel_values) + model.pos_embed)
        weights = []
        for block in model.blocks:
            x, w = block(x, return_weights=True)
            weights.append(w)
        scores = model.head_scores(model.norm(x))
        return (model.normalize_scores(scores), model.modulate(scores), *weights)


class EncoderGraph(nn.Module):
    """(src_ids, src_pad_mask) -> memory, i.e. `MultiMaxTranslator.encode`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = _eager(model)

    def forward(self, src_ids: Tensor, src_pad_mask: Tensor) -> Tensor:
        return self.model.encode(src_ids, src_pad_mask)


class CrossKVGraph(nn.Module):
    """memory -> (cross_key_0, cross_value_0, cross_key_1, ...), i.e. `MultiMaxTranslator.cross_kv`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = _eager(model)

    def forward(self, memory: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for kv in self.model.cross_kv(memory) for t in kv)


class DecoderGraph(nn.Module):
    """One `decode_step` with a (possibly empty) self-attention cache.

    Inputs: tokens, positions, self_pad_mask, src_pad_mask, then past_key_i/past_value_i and
    cross_key_i/cross_value_i per layer. Outputs: logits, then present_key_i/present_value_i.
    A cache of length 0 is the first step, so one graph serves the whole decode.
    """

    def __init__(self, model: nn.Module, num_layers: int) -> None:
        super().__init__()
        self.model = _eager(model)
        self.num_layers = num_layers

    def forward(self, tokens: Tensor, positions: Tensor, self_pad_mask: Tensor, src_pad_mask: Tensor, *caches: Tensor):
        n = self.num_layers
        past = [(caches[2 * i], caches[2 * i + 1]) for i in range(n)]
        cross = [(caches[2 * n + 2 * i], caches[2 * n + 2 * i + 1]) for i in range(n)]
        logits, present = self.model.decode_step(tokens, positions, past, self_pad_mask, cross, src_pad_mask)
        return (logits, *(t for kv in present for t in kv))
