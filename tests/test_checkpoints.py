"""Model directories: save/load round trip, manifest verification, tampering and malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmserve.checkpoints import (
    CheckpointError,
    ModelDirConfig,
    load_model_dir,
    read_config,
    save_model_dir,
    verify_manifest,
)
from mmserve.models import MultiMaxViT, ViTConfig

ARCH = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2)


def make_dir(tmp_path: Path, name: str = "m", arch: ViTConfig = ARCH) -> tuple[Path, MultiMaxViT]:
    torch.manual_seed(0)
    model = MultiMaxViT(arch)
    config = ModelDirConfig(
        name=name,
        task="image-classification",
        architecture=arch.model_dump(),
        labels=["a", "b", "c"],
        metrics={"test_accuracy": 0.5},
    )
    side = tmp_path / "extra.txt"
    side.write_text("side file from a path\n")
    directory = save_model_dir(
        tmp_path / name,
        model,
        config,
        side_files={"notes/raw.bin": b"\x00\x01", "extra.txt": side},
        card="# card\n",
    )
    return directory, model


def test_round_trip(tmp_path: Path) -> None:
    directory, model = make_dir(tmp_path)
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    assert names == [
        "README.md",
        "config.json",
        "extra.txt",
        "manifest.json",
        "model.safetensors",
        "notes/raw.bin",
    ]
    loaded = load_model_dir(directory)
    assert loaded.config.labels == ["a", "b", "c"] and loaded.architecture == ARCH
    assert not loaded.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    manifest = json.loads((directory / "manifest.json").read_text())
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert loaded.weights_sha256 == manifest["files"]["model.safetensors"]
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded.model(x), model.eval()(x))


def test_save_replaces_atomically(tmp_path: Path) -> None:
    directory, _ = make_dir(tmp_path)
    (directory / "stale.txt").write_text("left over")
    make_dir(tmp_path)
    assert not (directory / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging dirs left
    verify_manifest(directory)


def test_tampered_weights_refused(tmp_path: Path) -> None:
    directory, _ = make_dir(tmp_path)
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch"):
        load_model_dir(directory)
    load_model_dir(directory, verify=False)  # explicit opt-out still loads


def test_tampered_config_refused(tmp_path: Path) -> None:
    directory, _ = make_dir(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["labels"] = ["x", "y", "z"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: sha256 mismatch"):
        load_model_dir(directory)


def test_missing_listed_file_and_manifest(tmp_path: Path) -> None:
    directory, _ = make_dir(tmp_path)
    (directory / "notes" / "raw.bin").unlink()
    with pytest.raises(CheckpointError, match="raw.bin: listed in manifest.json but missing"):
        load_model_dir(directory)
    (directory / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        load_model_dir(directory)


def test_manifest_path_traversal_refused(tmp_path: Path) -> None:
    directory, _ = make_dir(tmp_path)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["../outside.txt"] = "0" * 64
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outside the directory"):
        verify_manifest(directory)


def test_malformed_manifest_and_config(tmp_path: Path) -> None:
    directory, _ = make_dir(tmp_path)
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json: not valid JSON"):
        verify_manifest(directory)
    (directory / "manifest.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(CheckpointError, match="no 'files' mapping"):
        verify_manifest(directory)
    (directory / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="config.json: invalid config"):
        read_config(directory)
    config = json.loads(
        json.dumps(
            {
                "name": "m",
                "task": "image-classification",
                "architecture": {"family": "vit", "img_size": 7, "patch_size": 2},
            }
        )
    )
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not divisible by patch_size"):
        read_config(directory)
    with pytest.raises(CheckpointError, match="not a directory"):
        read_config(tmp_path / "absent")


def test_weights_of_another_architecture_refused(tmp_path: Path) -> None:
    directory, _ = make_dir(tmp_path, "small")
    other, _ = make_dir(tmp_path, "wide", ARCH.model_copy(update={"embed_dim": 32}))
    (directory / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model_dir(directory, verify=False)


def test_softmax_weights_into_multimax_config_refused(tmp_path: Path) -> None:
    """Missing MultiMax parameters are named instead of silently keeping random ones."""
    directory, _ = make_dir(tmp_path, "mm")
    other, _ = make_dir(tmp_path, "sm", ARCH.model_copy(update={"attention_fn": "softmax"}))
    (directory / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="missing keys.*ranges"):
        load_model_dir(directory, verify=False)


def test_saved_files_are_readable_by_others(tmp_path: Path) -> None:
    directory, _ = make_dir(tmp_path)
    assert directory.stat().st_mode & 0o755 == 0o755
    for path in directory.rglob("*"):
        assert path.stat().st_mode & 0o044 == 0o044, path


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/file.txt"])
def test_side_file_outside_directory_refused(tmp_path: Path, name: str) -> None:
    config = ModelDirConfig(name="m", task="image-classification", architecture=ARCH.model_dump())
    with pytest.raises(ValueError, match="relative path inside"):
        save_model_dir(tmp_path / "m", MultiMaxViT(ARCH), config, side_files={name: b"x"})
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "m").exists()
