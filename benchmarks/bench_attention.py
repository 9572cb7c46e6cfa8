"""Attention-level CPU benchmark: SDPA (SoftMax) vs the MultiMax attention paths.

    python benchmarks/bench_attention.py [--reps 20] [--threads N] [--no-flex]

Candidates, side by side in one process (interleaved repetitions, medians, paired ratios to SDPA):
  sdpa                          F.scaled_dot_product_attention (the SoftMax baseline models use)
  multimax fused (auto)         multimax_attention(impl="auto") = the fused C++ attention for inference
  multimax eager                q k^T * scale -> mmserve::multimax (fused row kernel) -> @ v
  multimax flex (compiled)      torch.compile(flex_attention) with the modulator as score_mod
  softmax explicit              the same explicit matmul/softmax/matmul path with torch.softmax: the
                                floor of any "explicit scores" implementation
Configs: ViT-S at batch 8 ([8, 6, 196, 64], q/k/v as the strided views the ViT produces, no mask) and a
decoder-style self-attention with padding + causal masks ([16, 8, 64, 64]). Forward under
inference_mode; forward+backward (training: eager path vs SDPA) for the ViT config.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare, machine_info, print_comparison, apply_threads, torch_cpu_parser  # noqa: E402


def vit_qkv(B=8, T=196, H=6, D=64):
    qkv = torch.randn(B, T, 3 * H * D)
    return qkv.reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)


def softmax_explicit(q, k, v, mask=None, is_causal=False):
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


def main() -> None:
    parser = torch_cpu_parser(__doc__, reps=20, warmup=3)
    parser.add_argument("--no-flex", action="store_true", help="skip torch.compile(flex_attention) (slow to compile)")
    args = parser.parse_args()
    apply_threads(args)

    from mmserve.ops import multimax_attention
    from mmserve.ops.cpu_kernel import build, fused_attention_available

    build()
    print(machine_info())
    print(f"fused CPU attention available: {fused_attention_available()}")
    torch.manual_seed(0)
    ranges = torch.randn(4) * 0.02
    ts = torch.randn(4) * 0.02

    configs = []
    q, k, v = vit_qkv()
    configs.append(("ViT-S batch 8 [8, 6, 196, 64], no mask", q, k, v, None, False))
    B, H, T, D = 16, 8, 64, 64
    lengths = torch.randint(T // 2, T + 1, (B,))
    pad = (torch.arange(T)[None, :] >= lengths[:, None]).view(B, 1, 1, T)
    q2, k2, v2 = (torch.randn(B, H, T, D) for _ in range(3))
    configs.append(("decoder [16, 8, 64, 64], padding + causal", q2, k2, v2, pad, True))

    for title, q, k, v, mask, causal in configs:
        keep = None if mask is None else ~mask
        if causal and keep is not None:
            keep = keep & torch.ones(T, T, dtype=torch.bool).tril()

        def sdpa(q=q, k=k, v=v, keep=keep, causal=causal):
            if keep is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)

        candidates = {
            "sdpa": sdpa,
            "multimax fused (auto)": lambda q=q, k=k, v=v, m=mask, c=causal: multimax_attention(
                q, k, v, ranges, ts, mask=m, is_causal=c),
            "multimax eager": lambda q=q, k=k, v=v, m=mask, c=causal: multimax_attention(
                q, k, v, ranges, ts, mask=m, is_causal=c, impl="eager"),
            "softmax explicit": lambda q=q, k=k, v=v, m=mask, c=causal: softmax_explicit(q, k, v, m, c),
        }
        extra = {}
        if not args.no_flex:
            with torch.inference_mode():
                start = time.perf_counter()
                multimax_attention(q, k, v, ranges, ts, mask=mask, is_causal=causal, impl="flex")
            extra["multimax flex (compiled)"] = f"(first call incl. compile: {time.perf_counter() - start:.1f} s)"
            candidates["multimax flex (compiled)"] = lambda q=q, k=k, v=v, m=mask, c=causal: multimax_attention(
                q, k, v, ranges, ts, mask=m, is_causal=c, impl="flex")
        with torch.inference_mode():
            timings = compare(candidates, reps=args.reps, warmup=args.warmup)
        print_comparison(f"forward, {title}", timings, "sdpa", extra=extra)

    # training: forward + backward (flex has no CPU backward; the fused attention is inference-only)
    q, k, v = (t.detach().contiguous().requires_grad_() for t in vit_qkv())
    rg, tg = ranges.clone().requires_grad_(), ts.clone().requires_grad_()
    grad = torch.randn_like(q)

    def clear():
        for t in (q, k, v, rg, tg):
            t.grad = None

    candidates = {
        "sdpa": lambda: (clear(), F.scaled_dot_product_attention(q, k, v).backward(grad)),
        "multimax (auto = eager when training)": lambda: (
            clear(), multimax_attention(q, k, v, rg, tg).backward(grad)),
        "softmax explicit": lambda: (clear(), softmax_explicit(q, k, v).backward(grad)),
    }
    timings = compare(candidates, reps=args.reps, warmup=args.warmup)
    print_comparison("forward+backward, ViT-S batch 8 [8, 6, 196, 64] (grads to q, k, v, ranges, ts)", timings, "sdpa")


if __name__ == "__main__":
    main()
