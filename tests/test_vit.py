"""MultiMaxViT: shapes, configs, presets, the SoftMax switch, official key names, classify, determinism."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mmserve.models import VIT_PRESETS, MultiMaxViT, ViTConfig, build_model, parse_architecture
from mmserve.ops import seglu


def small(**overrides) -> ViTConfig:
    base = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=4)
    return ViTConfig(**{**base, **overrides})


def official_keys(depth: int) -> set[str]:
    """The state-dict keys of the authors' VisionTransformer (DESIGN.md), written out independently."""
    keys = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "norm.weight", "norm.bias"}
    keys |= {"head.weight", "head.bias", "ranges", "ts"}
    for i in range(depth):
        for name in (
            "norm1.weight",
            "norm1.bias",
            "attn.qkv.weight",
            "attn.proj.weight",
            "attn.proj.bias",
            "attn.ranges",
            "attn.ts",
            "norm2.weight",
            "norm2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        ):
            keys.add(f"blocks.{i}.{name}")
    return keys


@pytest.mark.parametrize(
    "cfg",
    [
        small(),
        small(patch_size=1),
        small(patch_size=4, in_chans=3, num_classes=3),
        small(img_size=32, patch_size=8, embed_dim=48, num_heads=3, mlp_ratio=3.0),
        small(qkv_bias=True, multimax_order=3),
    ],
    ids=["p2", "p1", "p4-rgb", "32px", "bias-order3"],
)
def test_shapes(cfg: ViTConfig) -> None:
    model = MultiMaxViT(cfg).eval()
    x = torch.randn(3, cfg.in_chans, cfg.img_size, cfg.img_size)
    logits = model(x)
    assert logits.shape == (3, cfg.num_classes)
    logits2, weights = model.forward_with_attention(x)
    assert torch.allclose(logits, logits2, atol=1e-5)
    n = cfg.num_patches
    assert len(weights) == cfg.depth
    for w in weights:
        assert w.shape == (3, cfg.num_heads, n, n)
        assert torch.allclose(w.sum(-1), torch.ones(3, cfg.num_heads, n), atol=1e-5)
    features = model.forward_features(x)
    assert features.shape == (3, n, cfg.embed_dim)


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="divisible by patch_size"):
        small(patch_size=3)
    with pytest.raises(ValidationError, match="divisible by num_heads"):
        small(num_heads=5)
    with pytest.raises(ValidationError):
        small(unknown_field=1)
    with pytest.raises(ValueError, match="unknown model family"):
        parse_architecture({"family": "resnet"})
    model = MultiMaxViT(small())
    with pytest.raises(ValueError, match="expected images of 8x8"):
        model(torch.randn(1, 1, 16, 16))


def test_config_round_trip_through_registry() -> None:
    cfg = small(attention_fn="softmax", output_fn="multimax")
    again = parse_architecture(cfg.model_dump())
    assert again == cfg
    assert isinstance(build_model(again), MultiMaxViT)


@pytest.mark.parametrize("preset,params_m", [("deit-tiny", 5.7), ("deit-small", 22.1)])
def test_presets_build(preset: str, params_m: float) -> None:
    cfg = ViTConfig(**VIT_PRESETS[preset])
    model = build_model(cfg)
    count = sum(p.numel() for p in model.parameters())
    # DeiT-Ti 5.7M / DeiT-S 22.1M parameters (no class token here, so slightly fewer).
    assert abs(count / 1e6 - params_m) < 0.1
    assert set(model.state_dict()) == official_keys(cfg.depth)
    assert cfg.num_patches == 196


def test_official_key_names() -> None:
    model = MultiMaxViT(small(depth=3))
    sd = model.state_dict()
    assert set(sd) == official_keys(3)
    assert sd["pos_embed"].shape == (1, 16, 32)
    assert sd["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert "blocks.0.attn.qkv.bias" not in sd  # official qkv has no bias
    assert sd["ranges"].shape == sd["ts"].shape == sd["blocks.1.attn.ranges"].shape == (4,)


def test_softmax_switch() -> None:
    cfg = small(attention_fn="softmax")
    model = MultiMaxViT(cfg).eval()
    keys = set(model.state_dict())
    assert not any(k.endswith("ranges") or k.endswith("ts") for k in keys)
    assert keys == {k for k in official_keys(cfg.depth) if not k.endswith(("ranges", "ts"))}
    x = torch.randn(2, 1, 8, 8)
    probs, logits = model.classify(x)
    assert torch.allclose(probs, torch.softmax(logits, -1), atol=1e-6)
    # SoftMax attention through SDPA and through the weights path agree.
    logits2, weights = model.forward_with_attention(x)
    assert torch.allclose(logits, logits2, atol=1e-5)
    assert all((w > 0).all() for w in weights)
    mixed = MultiMaxViT(small(attention_fn="softmax", output_fn="multimax"))
    assert "ranges" in mixed.state_dict() and "blocks.0.attn.ranges" not in mixed.state_dict()


def _randomise_modulators(model: MultiMaxViT, std: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ranges", "ts")):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def test_classify_probs_are_softmax_of_logits() -> None:
    torch.manual_seed(0)
    model = MultiMaxViT(small()).eval()
    _randomise_modulators(model)
    x = torch.randn(4, 1, 8, 8)
    probs, logits = model.classify(x)
    assert torch.allclose(probs, torch.softmax(logits, dim=-1), atol=1e-6)
    assert torch.allclose(logits, model(x), atol=1e-6)
    # The logits really are modulated: seglu(head(pool(features))) differs from the raw scores.
    scores = model.head_scores(model.forward_features(x))
    assert torch.allclose(logits, seglu(scores, model.ranges, model.ts), atol=1e-6)
    assert not torch.allclose(logits, scores, atol=1e-3)
    assert torch.allclose(model.predict_proba(x), probs)


def test_determinism() -> None:
    torch.manual_seed(1234)
    a = MultiMaxViT(small())
    torch.manual_seed(1234)
    b = MultiMaxViT(small())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    a.eval()
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(a(x), a(x))
    # Batch composition does not change a row's result (beyond float noise).
    assert torch.allclose(a(x)[:2], a(x[:2]), atol=1e-5)


def test_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    model = MultiMaxViT(small(drop_path_rate=0.5))
    x = torch.randn(8, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    out1 = model(x)
    torch.manual_seed(2)
    out2 = model(x)
    assert not torch.allclose(out1, out2)


def test_gradients_reach_modulators() -> None:
    torch.manual_seed(0)
    model = MultiMaxViT(small())
    _randomise_modulators(model)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name in ("ranges", "ts", "blocks.0.attn.ranges", "blocks.1.attn.ts"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
