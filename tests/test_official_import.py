"""`mmserve import official-vit`: a random official-layout checkpoint imports and matches an independent
re-implementation of the authors' forward pass; bad files fail with errors naming the file and key."""

from __future__ import annotations

import argparse
import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mmserve.checkpoints import CheckpointError, load_model_dir
from mmserve.checkpoints.official import import_official_vit, load_official_state_dict
from mmserve.cli import app

runner = CliRunner()

DIM, DEPTH, HEADS, PATCH, IMG, CHANS, CLASSES, HIDDEN = 32, 2, 4, 4, 16, 3, 7, 64


# ------------------------------------------------------- independent reference (from DESIGN.md only)


def official_selu(x: torch.Tensor, ranges: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The authors' SeLU, written out for order 2 exactly as in vision_transformer.py."""
    return (
        x
        + ts[0] * torch.relu(ranges[0] - x)
        + ts[1] * torch.relu(x - ranges[1])
        + ts[2] * torch.relu(ranges[2] - x) ** 2
        + ts[3] * torch.relu(x - ranges[3]) ** 2
    )


def official_forward(
    sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, eps: float = 1e-6
) -> torch.Tensor:
    """Functional VisionTransformer.forward: patch conv, pos_embed, pre-norm blocks, norm, mean, head,
    SeLU."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    patch = sd["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2) + sd["pos_embed"]
    b, n, c = t.shape
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = (h @ sd[p + "attn.qkv.weight"].T).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5
        if p + "attn.ranges" in sd:
            attn = official_selu(attn, sd[p + "attn.ranges"], sd[p + "attn.ts"])
        attn = attn.softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, c)
        t = t + (h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"])
        h = F.layer_norm(t, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        t = t + (h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"])
    t = F.layer_norm(t, (c,), sd["norm.weight"], sd["norm.bias"], eps).mean(1)
    logits = t @ sd["head.weight"].T + sd["head.bias"]
    if "ranges" in sd:
        logits = official_selu(logits, sd["ranges"], sd["ts"])
    return logits


def random_official_state_dict(seed: int = 0, multimax: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """A random checkpoint in the official key layout, with non-trivial ranges/ts (std 0.5)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    sd["pos_embed"] = rnd(1, (IMG // PATCH) ** 2, DIM)
    sd["patch_embed.proj.weight"] = rnd(DIM, CHANS, PATCH, PATCH)
    sd["patch_embed.proj.bias"] = rnd(DIM)
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd[p + "norm1.weight"] = 1 + rnd(DIM)
        sd[p + "norm1.bias"] = rnd(DIM)
        sd[p + "attn.qkv.weight"] = rnd(3 * DIM, DIM, std=0.5)
        sd[p + "attn.proj.weight"] = rnd(DIM, DIM)
        sd[p + "attn.proj.bias"] = rnd(DIM)
        if multimax:
            sd[p + "attn.ranges"] = rnd(4, std=0.5)
            sd[p + "attn.ts"] = rnd(4, std=0.5)
        sd[p + "norm2.weight"] = 1 + rnd(DIM)
        sd[p + "norm2.bias"] = rnd(DIM)
        sd[p + "mlp.fc1.weight"] = rnd(HIDDEN, DIM)
        sd[p + "mlp.fc1.bias"] = rnd(HIDDEN)
        sd[p + "mlp.fc2.weight"] = rnd(DIM, HIDDEN)
        sd[p + "mlp.fc2.bias"] = rnd(DIM)
    sd["norm.weight"] = 1 + rnd(DIM)
    sd["norm.bias"] = rnd(DIM)
    sd["head.weight"] = rnd(CLASSES, DIM, std=1.0)
    sd["head.bias"] = rnd(CLASSES)
    if multimax:
        sd["ranges"] = rnd(4, std=0.5)
        sd["ts"] = rnd(4, std=0.5)
    return sd


def cli_import(src: Path, out: Path, *extra: str):
    return runner.invoke(app, ["import", "official-vit", str(src), str(out), "--heads", str(HEADS), *extra])


# ----------------------------------------------------------------------------------------- parity


def test_reference_modulator_matters() -> None:
    """Sanity check of the test itself: the random ranges/ts change the output noticeably."""
    sd = random_official_state_dict()
    x = torch.randn(2, CHANS, IMG, IMG, generator=torch.Generator().manual_seed(1))
    plain = {k: v for k, v in sd.items() if not k.endswith(("ranges", "ts"))}
    assert (official_forward(sd, x, HEADS) - official_forward(plain, x, HEADS)).abs().max() > 0.05


@pytest.mark.parametrize("layout", ["bare", "wrapped", "ddp"])
def test_import_matches_official_forward(tmp_path: Path, layout: str) -> None:
    sd = random_official_state_dict(seed=1)
    if layout == "bare":
        payload = sd
    elif layout == "wrapped":  # DeiT's training checkpoint, including argparse args
        payload = {"model": sd, "epoch": 299, "args": argparse.Namespace(model="deit_small", lr=5e-4)}
    else:
        payload = {"model": OrderedDict((f"module.{k}", v) for k, v in sd.items())}
    src = tmp_path / "checkpoint.pth"
    torch.save(payload, src)
    out = tmp_path / "imported"
    result = cli_import(src, out, "--num-classes", str(CLASSES))
    assert result.exit_code == 0, result.output
    loaded = load_model_dir(out)
    arch = loaded.architecture
    assert (arch.embed_dim, arch.depth, arch.num_heads, arch.patch_size, arch.img_size, arch.in_chans) == (
        DIM,
        DEPTH,
        HEADS,
        PATCH,
        IMG,
        CHANS,
    )
    assert arch.num_classes == CLASSES and arch.mlp_ratio == HIDDEN / DIM and arch.multimax_order == 2
    assert arch.attention_fn == "multimax" and arch.head_fn == "multimax" and not arch.qkv_bias
    source = loaded.config.source
    assert source["kind"] == "official-vit" and source["file"] == "checkpoint.pth"
    assert source["sha256"] == __import__("hashlib").sha256(src.read_bytes()).hexdigest()
    x = torch.randn(3, CHANS, IMG, IMG, generator=torch.Generator().manual_seed(2))
    expected = official_forward(sd, x, HEADS)
    with torch.no_grad():
        probs, logits = loaded.model.classify(x)
        _, logits64 = loaded.model.double().classify(x.double())
    # The mapping itself: in float64 the imported model is the official forward up to rounding.
    assert torch.allclose(logits64, expected, atol=1e-10, rtol=0), (logits64 - expected).abs().max()
    # float32 as served: rounding through four blocks (the plain-PyTorch float32 formula is off by
    # ~4e-5 here too), so a float32-sized tolerance.
    assert torch.allclose(logits.double(), expected, atol=1e-4, rtol=1e-5), (logits.double() - expected).abs().max()
    assert torch.allclose(probs.double(), expected.softmax(-1), atol=1e-5)


def test_import_softmax_checkpoint(tmp_path: Path) -> None:
    sd = random_official_state_dict(seed=2, multimax=False)
    src = tmp_path / "softmax.pth"
    torch.save(sd, src)
    out = import_official_vit(src, tmp_path / "sm", num_heads=HEADS, name="softmax-vit")
    loaded = load_model_dir(out)
    assert loaded.architecture.attention_fn == "softmax" and loaded.architecture.head_fn == "softmax"
    assert loaded.config.name == "softmax-vit"
    x = torch.randn(2, CHANS, IMG, IMG, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = loaded.model(x)
    assert torch.allclose(logits.double(), official_forward(sd, x, HEADS), atol=1e-5)


def test_import_labels_and_eps(tmp_path: Path) -> None:
    sd = random_official_state_dict(seed=3)
    src = tmp_path / "m.pth"
    torch.save(sd, src)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class-{i}" for i in range(CLASSES)) + "\n")
    out = tmp_path / "out"
    result = cli_import(src, out, "--labels", str(labels), "--layer-norm-eps", "1e-5", "--name", "named")
    assert result.exit_code == 0, result.output
    loaded = load_model_dir(out)
    assert loaded.config.labels == [f"class-{i}" for i in range(CLASSES)]
    assert loaded.architecture.layer_norm_eps == 1e-5 and loaded.config.name == "named"
    x = torch.randn(1, CHANS, IMG, IMG)
    expected = official_forward(sd, x, HEADS, eps=1e-5)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x).double(), expected, atol=1e-4)  # float32 rounding
        assert torch.allclose(loaded.model.double()(x.double()), expected, atol=1e-10)  # the eps is used
    assert loaded.config.preprocessing["kind"] == "resize-crop"
    assert loaded.config.preprocessing["image_size"] == IMG


# ----------------------------------------------------------------------------------------- errors


def _expect_error(tmp_path: Path, payload, match: str, *extra: str, raw: bytes | None = None) -> None:
    src = tmp_path / "bad.pth"
    if raw is not None:
        src.write_bytes(raw)
    else:
        torch.save(payload, src)
    with pytest.raises(CheckpointError, match=match) as info:
        import_official_vit(src, tmp_path / "out", num_heads=int(extra[0]) if extra else HEADS)
    assert str(src) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_error_missing_key(tmp_path: Path) -> None:
    sd = random_official_state_dict()
    del sd["blocks.1.mlp.fc2.bias"]
    _expect_error(tmp_path, sd, r"missing keys \['blocks.1.mlp.fc2.bias'\]")


def test_error_class_token(tmp_path: Path) -> None:
    sd = random_official_state_dict()
    sd["cls_token"] = torch.zeros(1, 1, DIM)
    _expect_error(tmp_path, sd, "unexpected key 'cls_token'.*class token")


def test_error_unexpected_key(tmp_path: Path) -> None:
    sd = random_official_state_dict()
    sd["blocks.0.attn.temperature"] = torch.ones(1)
    _expect_error(tmp_path, sd, r"unexpected keys \['blocks.0.attn.temperature'\]")


def test_error_wrong_shape(tmp_path: Path) -> None:
    sd = random_official_state_dict()
    sd["blocks.1.attn.proj.weight"] = torch.zeros(DIM, DIM + 1)
    _expect_error(tmp_path, sd, r"'blocks.1.attn.proj.weight' has shape \(32, 33\), expected \(32, 32\)")


def test_error_non_square_grid(tmp_path: Path) -> None:
    sd = random_official_state_dict()
    sd["pos_embed"] = torch.zeros(1, 15, DIM)
    _expect_error(tmp_path, sd, "'pos_embed' has 15 positions: not a square patch grid")


def test_error_heads_do_not_divide(tmp_path: Path) -> None:
    _expect_error(tmp_path, random_official_state_dict(), "not divisible by 5 heads", "5")


def test_error_not_a_state_dict(tmp_path: Path) -> None:
    _expect_error(tmp_path, {"epoch": 3, "note": "hello"}, "not a state dict.*'epoch'")
    _expect_error(tmp_path, [torch.zeros(1)], "not a state dict: the file holds a list")


def test_error_pickle_refused(tmp_path: Path) -> None:
    """A whole pickled module (arbitrary code on load) is refused by weights_only, and we say so."""
    _expect_error(tmp_path, torch.nn.Linear(2, 2), r"refused by torch.load\(weights_only=True\)")


def test_error_garbage_file(tmp_path: Path) -> None:
    _expect_error(tmp_path, None, "not a readable PyTorch checkpoint", raw=b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not found"):
        load_official_state_dict(tmp_path / "nope.pth")


def test_cli_error_is_one_line_exit_2(tmp_path: Path) -> None:
    """Through the console entry point: UserError -> one line on stderr, exit status 2."""
    import subprocess
    import sys

    sd = random_official_state_dict()
    del sd["head.weight"]
    src = tmp_path / "nohead.pth"
    torch.save(sd, src)
    code = "from mmserve.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "import", "official-vit", str(src), str(tmp_path / "o"), "--heads", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip()
    assert "missing key 'head.weight'" in message and str(src) in message.replace("\n", "")
    assert "Traceback" not in proc.stderr


def test_labels_count_mismatch(tmp_path: Path) -> None:
    src = tmp_path / "m.pth"
    torch.save(random_official_state_dict(), src)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b"]))
    with pytest.raises(CheckpointError, match="has 2 labels but the checkpoint's head has 7 classes"):
        import_official_vit(src, tmp_path / "o", num_heads=HEADS, labels_file=labels)
    with pytest.raises(CheckpointError, match="--num-classes says 10"):
        import_official_vit(src, tmp_path / "o", num_heads=HEADS, num_classes=10)


def test_real_deit_small_shapes_infer(tmp_path: Path) -> None:
    """Shapes of an official DeiT-S (224, patch 16, 1000 classes) infer the right config."""
    from mmserve.checkpoints.official import infer_official_vit_config
    from mmserve.models import VIT_PRESETS, MultiMaxViT, ViTConfig

    model = MultiMaxViT(ViTConfig(**VIT_PRESETS["deit-small"]))
    cfg = infer_official_vit_config(tmp_path / "deit.pth", model.state_dict(), num_heads=6)
    assert cfg == model.config
    assert math.isclose(cfg.mlp_ratio, 4.0)
