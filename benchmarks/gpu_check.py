"""One-shot GPU check for a session that has a CUDA device: correctness first, then timings.

    python benchmarks/gpu_check.py [--quick] [--json OUT.json]

1. Correctness (fails loudly, exit status 1, on any wrong result):
   - tests/test_triton_kernels.py, compiled on CUDA tensors (MMSERVE_TRITON_TEST_DEVICE=cuda): the
     Triton row kernels, forward and backward, against float64 references (all dtypes, odd lengths,
     both launch regimes, masks incl. zero-stride and fully masked rows, extremes, determinism);
   - end-to-end: mmserve.ops.multimax on CUDA tensors (custom op -> Triton provider) with autograd vs
     float64 autograd, and long rows ([4096, 32000], [8, 40000]);
   - flex MultiMax attention (compiled, the impl="auto" path on CUDA) vs the eager path, forward and
     gradients to q, k, v, ranges, ts, with padding + causal masks and fully masked rows.
2. Timings (interleaved repetitions, medians, paired ratios; CUDA-synchronised):
   - row kernel vs torch.softmax on [64,12,197,197], [8,16,1024,1024], [4096,32000], float32 and
     bfloat16, forward and forward+backward, with achieved bandwidth vs a device-to-device copy;
   - flex MultiMax attention vs SDPA (and the eager MultiMax path), forward and forward+backward.

Nothing here has been run yet: this project's sessions so far had no GPU (README: "GPU: correctness
tested under TRITON_INTERPRET=1 only, speed unmeasured").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare, machine_info, paired_ratio  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAILURES: list[str] = []
RESULTS: dict[str, object] = {}


def check(name: str, fn) -> None:
    """Run one correctness check; record (and print) failures instead of stopping at the first."""
    try:
        fn()
        print(f"  ok    {name}")
    except Exception as exc:  # noqa: BLE001 - every failure is reported
        FAILURES.append(f"{name}: {type(exc).__name__}: {exc}")
        print(f"  FAIL  {name}: {type(exc).__name__}: {exc}")
        traceback.print_exc(limit=3)


def sync() -> None:
    torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ correctness


def run_kernel_tests() -> None:
    env = {**os.environ, "MMSERVE_TRITON_TEST_DEVICE": "cuda"}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_triton_kernels.py"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    print("\n".join("    " + line for line in out.stdout.strip().splitlines()[-15:]))
    if out.returncode != 0:
        raise AssertionError(f"pytest exited with {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")


def _params(order=2, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2 * order, generator=g) * scale, torch.randn(2 * order, generator=g) * scale


def check_custom_op_autograd() -> None:
    from mmserve.ops import multimax, multimax_reference
    from mmserve.ops.kernels import select_kernel

    x64 = torch.randn(6, 5, 197, dtype=torch.float64) * 3
    r64, t64 = (p.double() for p in _params())
    mask = torch.rand(6, 1, 197) > 0.7
    mask[2] = True
    g = torch.randn_like(x64)
    leaves = [x64.clone().requires_grad_(), r64.clone().requires_grad_(), t64.clone().requires_grad_()]
    (multimax_reference(*leaves, -1, mask) * g).sum().backward()
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        x = x64.to("cuda", dtype).requires_grad_()
        r = r64.float().cuda().requires_grad_()
        t = t64.float().cuda().requires_grad_()
        kernel = select_kernel(x, mask.cuda())
        assert kernel is not None and kernel.name == "triton", f"CUDA dispatch picked {kernel}"
        y = multimax(x, r, t, mask=mask.cuda())
        ref = multimax_reference(x.detach().cpu().double(), r64.float().double(), t64.float().double(), -1, mask)
        torch.testing.assert_close(y.detach().cpu().double(), ref, rtol=0, atol=tol / 10)
        (y * g.to("cuda", dtype)).sum().backward()
        if dtype == torch.float32:
            for got, leaf in zip((x.grad, r.grad, t.grad), leaves):
                scale = max(1.0, leaf.grad.abs().max().item())
                torch.testing.assert_close(got.cpu().double(), leaf.grad, rtol=tol, atol=tol * scale)
        assert torch.isfinite(x.grad).all() and (x.grad[2] == 0).all()


def check_long_rows() -> None:
    from mmserve.ops import multimax, multimax_reference

    r, t = _params()
    for shape in ((4096, 32000), (8, 40000)):
        x = torch.randn(shape, device="cuda") * 4
        y = multimax(x, r.cuda(), t.cuda())
        ref = multimax_reference(x.cpu().double(), r.double(), t.double())
        torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-4, atol=1e-7)


def check_flex_attention() -> None:
    from mmserve.ops import multimax_attention

    B, H, T, D = 4, 6, 197, 64
    pad = (torch.arange(T)[None, :] >= torch.tensor([T, 150, 0, 90])[:, None]).view(B, 1, 1, T).cuda()
    for causal in (False, True):
        outs = []
        for impl in ("eager", "auto"):
            torch.manual_seed(0)
            q, k, v = (torch.randn(B, H, T, D, device="cuda", requires_grad=True) for _ in range(3))
            r, t = (p.cuda().requires_grad_() for p in _params())
            out = multimax_attention(q, k, v, r, t, mask=pad, is_causal=causal, impl=impl)
            torch.manual_seed(1)
            (out * torch.randn_like(out)).sum().backward()
            outs.append((out.detach(), [p.grad for p in (q, k, v, r, t)]))
        (want, want_grads), (got, got_grads) = outs
        assert torch.isfinite(got).all() and (got[2] == 0).all(), "fully masked batch must give zeros"
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5)
        for name, a, b in zip("q k v ranges ts".split(), got_grads, want_grads):
            scale = max(1.0, b.abs().max().item())
            torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4 * scale, msg=f"grad {name} (causal={causal})")


# ------------------------------------------------------------------------------------ timings


def time_row_kernel(reps: int, quick: bool) -> None:
    from mmserve.ops import multimax

    shapes = [(64, 12, 197, 197), (8, 16, 1024, 1024), (4096, 32000)]
    if quick:
        shapes = shapes[:1] + shapes[2:]
    r, t = (p.cuda() for p in _params())
    rows = []
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, device="cuda", dtype=dtype)
            y = torch.empty_like(x)
            nbytes = 2 * x.numel() * x.element_size()  # read x, write y
            fwd = compare(
                {
                    "copy (device to device)": lambda: y.copy_(x),
                    "torch.softmax": lambda: torch.softmax(x, -1),
                    "multimax (triton)": lambda: multimax(x, r, t),
                },
                reps=reps, warmup=3, sync=sync,
            )
            xg = x.clone().requires_grad_()
            rg, tg = r.clone().requires_grad_(), t.clone().requires_grad_()
            grad = torch.randn_like(x)

            def softmax_fb():
                torch.softmax(xg, -1).backward(grad)

            def multimax_fb():
                multimax(xg, rg, tg).backward(grad)

            fb = compare({"torch.softmax fwd+bwd": softmax_fb, "multimax fwd+bwd": multimax_fb},
                         reps=reps, warmup=3, sync=sync)
            copy_bw = nbytes / fwd["copy (device to device)"].median / 1e9
            mm_bw = nbytes / fwd["multimax (triton)"].median / 1e9
            sm_bw = nbytes / fwd["torch.softmax"].median / 1e9
            row = {
                "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
                "softmax_ms": fwd["torch.softmax"].median * 1e3,
                "multimax_ms": fwd["multimax (triton)"].median * 1e3,
                "fwd_ratio": paired_ratio(fwd["multimax (triton)"], fwd["torch.softmax"]),
                "fwd_bwd_ratio": paired_ratio(fb["multimax fwd+bwd"], fb["torch.softmax fwd+bwd"]),
                "copy_GBps": copy_bw, "multimax_GBps": mm_bw, "softmax_GBps": sm_bw,
                "multimax_vs_copy_bandwidth": mm_bw / copy_bw,
            }
            rows.append(row)
            print(
                f"  {str(list(shape)):<22} {row['dtype']:<9} softmax {row['softmax_ms']:8.3f} ms  "
                f"multimax {row['multimax_ms']:8.3f} ms  fwd x{row['fwd_ratio']:.2f}  fwd+bwd x{row['fwd_bwd_ratio']:.2f}  "
                f"{mm_bw:7.0f} GB/s = {100 * row['multimax_vs_copy_bandwidth']:.0f}% of copy ({copy_bw:.0f} GB/s)"
            )
            del x, y, xg, grad
            torch.cuda.empty_cache()
    RESULTS["row_kernel"] = rows


def time_attention(reps: int, quick: bool) -> None:
    import torch.nn.functional as F

    from mmserve.ops import multimax_attention

    configs = [("ViT-S [64,6,197,64] fp32", 64, 6, 197, 64, torch.float32, False),
               ("decoder [8,12,1024,64] bf16 causal", 8, 12, 1024, 64, torch.bfloat16, True)]
    if quick:
        configs = configs[:1]
    r, t = (p.cuda() for p in _params())
    rows = []
    for name, B, H, T, D, dtype, causal in configs:
        q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dtype) for _ in range(3))
        fwd = compare(
            {
                "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                "multimax flex": lambda: multimax_attention(q, k, v, r, t, is_causal=causal, impl="flex"),
                "multimax eager": lambda: multimax_attention(q, k, v, r, t, is_causal=causal, impl="eager"),
            },
            reps=reps, warmup=3, sync=sync,
        )
        qg, kg, vg = (a.clone().requires_grad_() for a in (q, k, v))
        rg, tg = r.clone().requires_grad_(), t.clone().requires_grad_()
        grad = torch.randn_like(q)
        fb = compare(
            {
                "sdpa": lambda: F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal).backward(grad),
                "multimax flex": lambda: multimax_attention(qg, kg, vg, rg, tg, is_causal=causal, impl="flex").backward(grad),
                "multimax eager": lambda: multimax_attention(qg, kg, vg, rg, tg, is_causal=causal, impl="eager").backward(grad),
            },
            reps=reps, warmup=3, sync=sync,
        )
        row = {
            "config": name,
            "fwd_ms": {k_: v_.median * 1e3 for k_, v_ in fwd.items()},
            "fwd_bwd_ms": {k_: v_.median * 1e3 for k_, v_ in fb.items()},
            "flex_vs_sdpa_fwd": paired_ratio(fwd["multimax flex"], fwd["sdpa"]),
            "flex_vs_sdpa_fwd_bwd": paired_ratio(fb["multimax flex"], fb["sdpa"]),
            "eager_vs_sdpa_fwd": paired_ratio(fwd["multimax eager"], fwd["sdpa"]),
        }
        rows.append(row)
        print(
            f"  {name:<36} flex/sdpa fwd x{row['flex_vs_sdpa_fwd']:.2f}  fwd+bwd x{row['flex_vs_sdpa_fwd_bwd']:.2f}  "
            f"eager/sdpa fwd x{row['eager_vs_sdpa_fwd']:.2f}  (sdpa fwd {row['fwd_ms']['sdpa']:.3f} ms)"
        )
    RESULTS["attention"] = rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per candidate")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--skip-timings", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check", file=sys.stderr)
        return 2
    reps = args.reps or (10 if args.quick else 30)
    print(machine_info())
    RESULTS["machine"] = machine_info()
    torch.manual_seed(0)

    print("\n[1] correctness")
    check("Triton kernel tests on CUDA (tests/test_triton_kernels.py)", run_kernel_tests)
    check("mmserve.ops.multimax on CUDA: custom op -> Triton, autograd vs float64", check_custom_op_autograd)
    check("long rows [4096, 32000] and [8, 40000] vs float64", check_long_rows)
    check("flex MultiMax attention (impl=auto) vs eager, values and 5 gradients", check_flex_attention)
    RESULTS["failures"] = FAILURES
    if FAILURES:
        print(f"\nFAILED: {len(FAILURES)} correctness check(s); timings skipped:")
        for failure in FAILURES:
            print(f"  - {failure.splitlines()[0]}")
        _write(args.json)
        return 1

    if not args.skip_timings:
        print(f"\n[2] row kernel vs torch.softmax ({reps} interleaved repetitions, medians)")
        time_row_kernel(reps, args.quick)
        print("\n[3] attention: flex MultiMax vs SDPA")
        time_attention(reps, args.quick)
    _write(args.json)
    print("\nall correctness checks passed")
    return 0


def _write(path) -> None:
    if path is not None:
        path.write_text(json.dumps(RESULTS, indent=2, default=str))
        print(f"results written to {path}")


if __name__ == "__main__":
    sys.exit(main())
