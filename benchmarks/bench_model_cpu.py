"""Whole-model CPU benchmark on the torch backend: MultiMax ViT vs the same ViT with SoftMax.

    python benchmarks/bench_model_cpu.py [--reps 15] [--threads N] [--batch 8] [--digits-batch 256]

DeiT-S (mmserve.models.ViTConfig(**VIT_PRESETS["deit-small"]), random weights, 224x224, batch 8),
eval mode under torch.inference_mode, candidates side by side (interleaved, medians, paired ratios):
  softmax                         attention_fn="softmax": F.scaled_dot_product_attention
  multimax (auto)                 what serving runs: fused C++ attention + fused row op for the head
  multimax, eager attention       explicit q k^T -> mmserve::multimax (C++ row kernel) -> @ v
  multimax, reference kernels     MMSERVE_KERNELS=reference: the plain PyTorch formula (before this work)
Target (issue "Fused MultiMax kernels"): multimax (auto) within 1.05x of softmax.
Then the bundled digits model (models/digits-vit) if it exists, against its SoftMax twin (same
architecture with attention_fn/output_fn "softmax", random weights: only speed is compared).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare, machine_info, print_comparison, apply_threads, torch_cpu_parser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _with_reference_kernels(fn):
    def run():
        previous = os.environ.get("MMSERVE_KERNELS")
        os.environ["MMSERVE_KERNELS"] = "reference"
        try:
            return fn()
        finally:
            if previous is None:
                os.environ.pop("MMSERVE_KERNELS", None)
            else:
                os.environ["MMSERVE_KERNELS"] = previous

    return run


def bench_pair(title, make_multimax, make_softmax, x, reps, warmup, include_reference=True):
    multimax_model = make_multimax()
    eager_model = make_multimax()
    eager_model.set_attention_impl("eager")
    softmax_model = make_softmax()
    candidates = {
        "softmax": lambda: softmax_model(x),
        "multimax (auto)": lambda: multimax_model(x),
        "multimax, eager attention": lambda: eager_model(x),
    }
    if include_reference:
        candidates["multimax, reference kernels"] = _with_reference_kernels(lambda: multimax_model(x))
    with torch.inference_mode():
        timings = compare(candidates, reps=reps, warmup=warmup)
    return print_comparison(title, timings, "softmax")


def main() -> None:
    parser = torch_cpu_parser(__doc__, reps=15, warmup=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--digits-batch", type=int, default=256)
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference-kernel candidate")
    args = parser.parse_args()
    apply_threads(args)

    from mmserve.models import ViTConfig
    from mmserve.models.vit import VIT_PRESETS, MultiMaxViT
    from mmserve.ops.cpu_kernel import build, fused_attention_available

    build()
    print(machine_info())
    print(f"fused CPU attention available: {fused_attention_available()}")

    def deit(attention_fn):
        def make():
            torch.manual_seed(0)
            return MultiMaxViT(ViTConfig(**VIT_PRESETS["deit-small"], attention_fn=attention_fn)).eval()

        return make

    x = torch.randn(args.batch, 3, 224, 224)
    bench_pair(
        f"DeiT-S, random weights, {args.batch}x3x224x224, torch backend (inference_mode)",
        deit("multimax"), deit("softmax"), x, args.reps, args.warmup, include_reference=not args.no_reference,
    )

    digits = REPO / "models" / "digits-vit"
    if (digits / "config.json").exists():
        from mmserve.checkpoints import load_model_dir
        from mmserve.models.registry import build_model

        loaded = load_model_dir(digits)
        arch = loaded.architecture

        def make_multimax():
            return load_model_dir(digits).model.eval()

        def make_softmax():
            twin = arch.model_copy(update={"attention_fn": "softmax", "output_fn": "softmax"})
            torch.manual_seed(0)
            return build_model(twin).eval()

        xd = torch.randn(args.digits_batch, arch.in_chans, arch.img_size, arch.img_size)
        bench_pair(
            f"bundled digits-vit ({arch.embed_dim}-d, depth {arch.depth}, {arch.num_patches} patches), "
            f"batch {args.digits_batch}",
            make_multimax, make_softmax, xd, args.reps * 2, args.warmup, include_reference=not args.no_reference,
        )
    else:
        print(f"\n(models/digits-vit not found at {digits}: skipped)")


if __name__ == "__main__":
    main()
