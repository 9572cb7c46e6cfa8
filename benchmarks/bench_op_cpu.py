"""Op-level CPU benchmark: MultiMax vs torch.softmax, forward and forward+backward.

    python benchmarks/bench_op_cpu.py [--reps 20] [--threads N] [--no-compile] [--shapes attn,vocab]

Candidates, measured side by side in one process (interleaved repetitions, medians, paired ratios):
  torch.softmax                   the target to match
  reference eager                 softmax(seglu(x)) in plain PyTorch ops (mmserve.ops.multimax_reference)
  torch.compile(reference)        inductor's fusion of the same formula (compile time printed apart)
  fused (mmserve.ops.multimax)    the mmserve::multimax custom op -> C++ kernel (what models run)
  fused kernel, direct            torch.ops.mmserve_cpu.multimax_forward (no custom-op wrapper)
Shapes: ViT attention scores [32, 6, 197, 197] and a vocabulary-sized output [64, 32000], float32.
Target (issue "Fused MultiMax kernels"): fused forward <= 1.3x torch.softmax on [32, 6, 197, 197].
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare, machine_info, print_comparison, apply_threads, torch_cpu_parser  # noqa: E402

SHAPES = {"attn": (32, 6, 197, 197), "vocab": (64, 32000)}


def main() -> None:
    parser = torch_cpu_parser(__doc__, reps=20, warmup=3)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--shapes", default="attn,vocab", help=f"comma list of {sorted(SHAPES)}")
    args = parser.parse_args()
    apply_threads(args)

    from mmserve.ops import multimax, multimax_reference
    from mmserve.ops.cpu_kernel import build

    info = build()
    print(machine_info())
    print(f"C++ kernel: {info.library} (flags: {' '.join(info.cflags)})")
    torch.manual_seed(0)
    ranges = torch.randn(4) * 0.02
    ts = torch.randn(4) * 0.02
    compiled = None
    if not args.no_compile:
        compiled = torch.compile(multimax_reference, dynamic=False)

    for key in args.shapes.split(","):
        shape = SHAPES[key]
        x = torch.randn(shape) * 2
        grad = torch.randn(shape)

        # ---------------------------------------------------------------- forward
        candidates = {
            "torch.softmax": lambda: torch.softmax(x, -1),
            "reference eager": lambda: multimax_reference(x, ranges, ts),
            "fused (mmserve.ops.multimax)": lambda: multimax(x, ranges, ts),
            "fused kernel, direct": lambda: torch.ops.mmserve_cpu.multimax_forward(x, ranges, ts, None),
        }
        extra = {}
        if compiled is not None:
            start = time.perf_counter()
            compiled(x, ranges, ts)
            extra["torch.compile(reference)"] = f"(first call incl. compile: {time.perf_counter() - start:.1f} s)"
            candidates["torch.compile(reference)"] = lambda: compiled(x, ranges, ts)
        with torch.inference_mode():
            timings = compare(candidates, reps=args.reps, warmup=args.warmup)
        print_comparison(f"forward {list(shape)} float32", timings, "torch.softmax", extra=extra)

        # ---------------------------------------------------------------- forward + backward
        xg = x.clone().requires_grad_()
        rg = ranges.clone().requires_grad_()
        tg = ts.clone().requires_grad_()

        def clear():
            xg.grad = rg.grad = tg.grad = None

        candidates = {
            "torch.softmax": lambda: (clear(), torch.softmax(xg, -1).backward(grad)),
            "reference eager": lambda: (clear(), multimax_reference(xg, rg, tg).backward(grad)),
            "fused (mmserve.ops.multimax)": lambda: (clear(), multimax(xg, rg, tg).backward(grad)),
        }
        extra = {}
        if compiled is not None:
            start = time.perf_counter()
            compiled(xg, rg, tg).backward(grad)
            extra["torch.compile(reference)"] = f"(first call incl. compile: {time.perf_counter() - start:.1f} s)"
            candidates["torch.compile(reference)"] = lambda: (clear(), compiled(xg, rg, tg).backward(grad))
        timings = compare(candidates, reps=args.reps, warmup=args.warmup)
        print_comparison(f"forward+backward {list(shape)} float32 (grads to x, ranges, ts)", timings, "torch.softmax",
                         extra=extra)


if __name__ == "__main__":
    main()
