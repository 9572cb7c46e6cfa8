"""The export check on a model with sharp attention: float32 vs float32, and both vs float64.

Builds the checkpoint of issue 9 section 4 (an official-layout {'model': state_dict} ViT at 224 px,
2 blocks, width 192, 3 heads, 1000 classes, qkv weights std 0.3 so attention is sharp, non-trivial
ranges/ts), imports it with `mmserve import official-vit`, exports it with `mmserve export` and prints,
per graph and output, what the export check measured (manifest.json["graphs"][...]["validation"]):

    onnx-torch32   max |onnxruntime - torch float32|      (the former check: refused above atol 1e-4)
    onnx-f64       max |onnxruntime - torch float64|
    torch32-f64    max |torch float32 - torch float64|    (float32's own error on this output)

    python benchmarks/export_check_sharp_vit.py [--seed 0] [--keep DIR]

tests/test_export_validation.py builds its checkpoint with `build_checkpoint` below.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

SHARP = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=2, num_heads=3)


def build_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write the sharp-attention official checkpoint to `path` ({'model': state_dict, 'epoch': 300})."""
    from mmserve.models import ViTConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ViTConfig(**SHARP))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ranges", "ts")):
                p.normal_(0, 0.5)
            elif name.endswith("qkv.weight"):
                p.normal_(0, 0.3)  # sharp attention
    torch.save({"model": model.state_dict(), "epoch": 300}, path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    args = parser.parse_args()
    from typer.testing import CliRunner

    from mmserve.cli import app

    with tempfile.TemporaryDirectory(prefix="sharp-vit-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        checkpoint = build_checkpoint(root / "checkpoint.pth", args.seed)
        runner = CliRunner()
        for command in (["import", "official-vit", str(checkpoint), str(root / "model"), "--heads", str(SHARP["num_heads"])],
                        ["export", str(root / "model"), "--out", str(root / "onnx")]):
            result = runner.invoke(app, command)
            print(f"$ mmserve {' '.join(command[:2])} ...: exit {result.exit_code}")
            if result.exit_code != 0:
                print(result.output or result.exception)
                return 1
        graphs = json.loads((root / "onnx" / "manifest.json").read_text())["graphs"]
        print(f"{'graph file':<24} {'output':<22} {'onnx-torch32':>13} {'onnx-f64':>10} {'torch32-f64':>12}")
        for entry in graphs.values():
            for filename, outputs in entry["validation"].items():
                for output, e in outputs.items():
                    print(f"{filename:<24} {output:<22} {e['onnx_vs_torch']:13.2e} {e['onnx_vs_float64']:10.2e} "
                          f"{e['torch_vs_float64']:12.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
