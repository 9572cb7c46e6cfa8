"""The C++ CPU kernel itself (`torch.ops.mmserve_cpu.*`), against float64 references, plus its build
cache, threading and fallback behaviour. Skipped (with the reason) where no C++ toolchain exists."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmserve.ops.backward import multimax_backward_reference
from mmserve.ops.reference import multimax_reference

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ops():
    from mmserve.ops.cpu_kernel import build

    try:
        build()
    except Exception as exc:  # pragma: no cover - machines without a compiler
        pytest.skip(f"C++ kernel cannot be built here: {type(exc).__name__}: {exc}")
    return torch.ops.mmserve_cpu



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

def params(order: int, seed: int = 0, scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2 * order, generator=g) * scale, torch.randn(2 * order, generator=g) * scale


TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def reference(x, ranges, ts, mask=None):
    return multimax_reference(x.double(), ranges.double(), ts.double(), -1, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 6])  # 6 runs the run-time-order code path
@pytest.mark.parametrize("length", [1, 15, 16, 17, 63, 197, 1000])
def test_forward_matches_reference(ops, dtype, order, length):
    x = (torch.randn(3, length, dtype=torch.float64) * 3).to(dtype)
    ranges, ts = params(order, seed=length + order)
    y = ops.multimax_forward(x, ranges, ts, None)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), reference(x, ranges, ts), rtol=0, atol=TOL[dtype])


def test_long_vocab_rows(ops):
    x = torch.randn(4, 32000) * 4
    ranges, ts = params(2, seed=1)
    y = ops.multimax_forward(x, ranges, ts, None)
    ref = reference(x, ranges, ts)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-9)


def test_exp_accuracy_over_its_whole_range(ops):
    """Order 0 is plain softmax: exercises the polynomial exp from 0 down to the underflow cut-off."""
    x = torch.linspace(-120.0, 0.0, 4001).view(1, -1).double()  # float32 points, exactly
    empty = torch.empty(0)
    y = ops.multimax_forward(x.float(), empty, empty, None).double()
    ref = torch.softmax(x, dim=-1)
    normal = ref > 1e-37  # below FLT_MIN the kernel flushes to 0 by design
    rel = ((y - ref).abs() / ref)[normal]
    assert rel.max() < 2e-6
    assert (y[~normal] <= 1e-37).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mask_layouts(ops, dtype):
    """Every mask path: bool/additive contiguous, zero strides from expand (leading and last dim),
    odd strides (transposed), other dtypes (gathered), fully masked rows."""
    B, H, Q, K = 2, 3, 5, 37
    x = torch.randn(B, H, Q, K, dtype=dtype)
    ranges, ts = params(2, seed=2)
    g = torch.Generator().manual_seed(7)
    pad = torch.rand(B, 1, 1, K, generator=g) > 0.6
    pad[1] = True  # batch 1 fully masked
    masks = {
        "bool padding (zero strides)": pad.expand(B, H, Q, K),
        "bool contiguous": torch.rand(B, H, Q, K, generator=g) > 0.5,
        "bool zero last stride": (torch.rand(B, H, Q, 1, generator=g) > 0.5).expand(B, H, Q, K),
        "bool transposed": (torch.rand(B, H, K, Q, generator=g) > 0.5).transpose(-1, -2),
        "additive same dtype": torch.randn(B, 1, Q, K, generator=g, dtype=torch.float64).to(dtype).expand(B, H, Q, K),
        "additive -inf": torch.zeros(B, H, Q, K, dtype=dtype).masked_fill(pad, -math.inf),
        "additive float16 (gathered)": torch.randn(1, H, 1, K, generator=g).half().expand(B, H, Q, K),
        "additive other float dtype": torch.randn(B, H, Q, K, generator=g, dtype=torch.float64).to(
            torch.float32 if dtype == torch.float64 else torch.float64
        ),
    }
    for name, mask in masks.items():
        y = ops.multimax_forward(x, ranges, ts, mask)
        ref = reference(x, ranges, ts, mask)
        assert torch.isfinite(y).all(), name
        torch.testing.assert_close(y.double(), ref, rtol=0, atol=TOL[dtype], msg=name)
        if mask.dtype == torch.bool:
            assert (y[mask] == 0).all(), name


def test_fully_masked_rows_give_zeros_not_nan(ops):
    x = torch.randn(3, 50)
    ranges, ts = params(2)
    mask = torch.zeros(3, 50, dtype=torch.bool)
    mask[1] = True
    y = ops.multimax_forward(x, ranges, ts, mask)
    assert (y[1] == 0).all() and torch.isfinite(y).all()
    assert torch.allclose(y[[0, 2]].sum(-1), torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_extremes(ops, dtype):
    x = (torch.rand(8, 97, dtype=torch.float64) * 2e4 - 1e4).to(dtype)
    ranges, ts = params(2, scale=1.0)
    y = ops.multimax_forward(x, ranges, ts, None)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), reference(x, ranges, ts), rtol=0, atol=TOL[dtype])


def test_nan_rows_stay_nan(ops):
    x = torch.randn(2, 40)
    x[0, 5] = float("nan")
    y = ops.multimax_forward(x, *params(2), None)
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("order", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("length", [1, 17, 197])
def test_backward_matches_reference(ops, dtype, order, length):
    x = (torch.randn(37, length, dtype=torch.float64) * 2).to(dtype)  # 37 rows: a partial row block
    ranges, ts = params(order, seed=order * 100 + length)
    if dtype == torch.float64:  # gradients come back in the parameters' dtype
        ranges, ts = ranges.double(), ts.double()
    y = ops.multimax_forward(x, ranges, ts, None)
    g = torch.randn(37, length, dtype=torch.float64).to(dtype)
    dx, dr, dt = ops.multimax_backward(g, y, x, ranges, ts)
    rdx, rdr, rdt = multimax_backward_reference(g.double(), y.double(), x.double(), ranges.double(), ts.double(), -1)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert dx.dtype == dtype and dr.dtype == ranges.dtype and dt.dtype == ts.dtype
    # float32: at orders 3-5 the sums cancel terms as large as 5 d^4 (d up to ~6), so the same
    # formula evaluated by PyTorch in float32 is itself off by ~1e-4; the kernel may be off by up to
    # twice what that float32 reference is, and never more than tol relative to the largest value.
    ref32 = (None,) * 3
    if dtype == torch.float32:
        ref32 = multimax_backward_reference(g, y, x, ranges, ts, -1)
    for got, want, want32 in zip((dx, dr, dt), (rdx, rdr, rdt), ref32):
        scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
        atol = tol * scale
        if want32 is not None and want.numel():
            atol = max(atol, 2 * (want32.double() - want).abs().max().item())
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=atol)


def test_backward_deterministic_across_thread_counts(ops):
    x = torch.randn(64, 6, 97) * 2
    ranges, ts = params(2, seed=3)
    y = ops.multimax_forward(x, ranges, ts, None)
    g = torch.randn_like(x)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            results.append(ops.multimax_backward(g, y, x, ranges, ts))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_runs_on_torch_thread_pool_with_one_openmp_runtime(ops):
    threads = torch.get_num_threads()
    assert ops.parallel_threads() == threads
    if sys.platform.startswith("linux"):
        maps = Path("/proc/self/maps").read_text().splitlines()
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
        assert len(runtimes) <= 1, f"more than one OpenMP runtime loaded: {runtimes}"


def test_build_cache_layout(ops):
    from mmserve.ops.cpu_kernel import build, cache_root

    info = build()
    assert Path(info.library).exists()
    assert Path(info.directory).parent == cache_root()
    stamp = json.loads((Path(info.directory) / "build.json").read_text())
    assert stamp["key"] == info.key and "-O3" in stamp["cflags"]


def test_rejects_bad_inputs(ops):
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.multimax_forward(torch.randn(4, 6).t(), *params(2), None)
    with pytest.raises(RuntimeError, match="even length"):
        ops.multimax_forward(torch.randn(4, 6), torch.zeros(3), torch.zeros(3), None)


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, **env},
    )


@pytest.mark.slow  # a fresh interpreter imports torch (~5 s)
def test_falls_back_to_reference_without_a_compiler(tmp_path):
    """No compiler: the op still works (reference path) and `kernels info` explains why."""
    code = (
        "import torch, json\n"
        "from mmserve.ops import multimax, available_kernels, multimax_reference\n"
        "x = torch.randn(3, 9); r = torch.randn(4) * .1; t = torch.randn(4) * .1\n"
        "assert torch.allclose(multimax(x, r, t), multimax_reference(x, r, t))\n"
        "print(json.dumps(available_kernels()['cpu']))\n"
    )
    out = _run(code, CXX=str(tmp_path / "no-such-compiler"), MMSERVE_KERNEL_CACHE=str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr
    cpu = json.loads(out.stdout.strip().splitlines()[-1])
    assert cpu[0]["name"] == "cpp" and cpu[0]["loaded"] is False
    assert "compiler" in cpu[0]["error"]


_NARROW_VECTOR_CHECK = """
import torch
from mmserve.ops.cpu_kernel import build
from mmserve.ops.backward import multimax_backward_reference
from mmserve.ops.reference import multimax_reference
info = build()
assert any(f.startswith("-march=") for f in info.cflags), info.cflags
ops = torch.ops.mmserve_cpu
g = torch.Generator().manual_seed(3)
for order in (0, 1, 2, 3, 5):
    r = torch.randn(2 * order, generator=g) * 0.5
    t = torch.randn(2 * order, generator=g) * 0.5
    for length in (1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 197):
        x = torch.randn(6, length, generator=g) * 2
        masks = {"none": None, "bool": torch.rand(6, length, generator=g) > 0.6,
                 "additive": torch.randn(6, length, generator=g),
                 "expanded bool": (torch.rand(1, length, generator=g) > 0.5).expand(6, length)}
        for name, mask in masks.items():
            got = ops.multimax_forward(x, r, t, mask).double()
            want = multimax_reference(x.double(), r.double(), t.double(), mask=mask)
            err = (got - want).abs().max().item()
            assert err < 2e-6, (order, length, name, err)
        if order > 3:  # order 5 runs the per-order passes, which have no vector tail step
            continue
        y = ops.multimax_forward(x, r, t, None)
        gy = torch.randn(6, length, generator=g)
        got = ops.multimax_backward(gy, y, x, r, t)
        want = multimax_backward_reference(gy.double(), y.double(), x.double(), r.double(), t.double(), -1)
        for a, b in zip(got, want):
            err = (a.double() - b).abs().max().item() if b.numel() else 0.0
            assert err < 1e-4 * max(1.0, b.abs().max().item() if b.numel() else 1.0), (order, length, err)
x = torch.randn(2, 21)
x[0, 20] = float("nan")
y = ops.multimax_forward(x, r, t, None)
assert torch.isnan(y[0]).all() and torch.isfinite(y[1]).all()
print("ok")
"""


@pytest.mark.slow  # compiles the kernel again (~20 s per target)
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])  # AVX2 (8 lanes), SSE2 (4 lanes)
def test_narrower_vector_builds_match_reference(ops, tmp_path, march):
    """Machines without AVX-512 get 8- or 4-lane vectors and the portable tail code; check those
    builds too (row lengths around every lane count, masks, NaN rows, the backward)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"-march={march} targets x86-64; this machine is {platform.machine()}")
    out = _run(_NARROW_VECTOR_CHECK, MMSERVE_CPU_KERNEL_MARCH=march, MMSERVE_KERNEL_CACHE=str(tmp_path))
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_cli_build_reports_location(ops):
    from typer.testing import CliRunner

    from mmserve.cli import app

    result = CliRunner().invoke(app, ["kernels", "build"])
    assert result.exit_code == 0, result.output
    assert "CPU kernel" in result.output and ".so" in result.output


# ------------------------------------------------------------------------------------ fused attention


def _qkv_views(B, T, H, D, seed=0):
    """q, k, v as the ViT produces them: strided views of one [B, T, 3*H*D] projection."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, generator=g) * 1.5
    return qkv.reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)


def _attention_cases(B, H, Tq, Tk):
    g = torch.Generator().manual_seed(5)
    pad = torch.arange(Tk)[None, :] >= torch.tensor([Tk - 4, 0] + [Tk] * (B - 2))[:, None]
    pad = pad.view(B, 1, 1, Tk)  # batch 1: no valid key at all
    return {
        "none": (None, False),
        "padding": (pad, False),
        "causal": (None, True),
        "padding + causal": (pad, True),
        "2-D bool": (torch.rand(Tq, Tk, generator=g) > 0.6, False),
        "per-head bool + causal": (torch.rand(B, H, Tq, Tk, generator=g) > 0.6, True),
        "additive float": (torch.randn(B, 1, Tq, Tk, generator=g), False),
        "additive float64 (gathered)": (torch.randn(1, H, 1, Tk, generator=g, dtype=torch.float64), False),
    }


@pytest.mark.parametrize("order", [0, 2, 3])
@pytest.mark.parametrize("Tq, Tk", [(37, 37), (1, 23), (5, 40), (200, 200)])
def test_fused_attention_matches_eager(ops, order, Tq, Tk):
    from mmserve.ops import multimax_attention
    from mmserve.ops.cpu_kernel import fused_attention_available

    if not fused_attention_available():
        pytest.skip("this torch exports no BLAS sgemm: fused attention unavailable")
    B, H, D = 2, 3, 16
    q, _, _ = _qkv_views(B, Tq, H, D, seed=1)
    _, k, v = _qkv_views(B, Tk, H, D, seed=2)
    ranges, ts = params(order, seed=order)
    for name, (mask, causal) in _attention_cases(B, H, Tq, Tk).items():
        got = ops.attention_forward(
            q, k, v, ranges, ts, None if mask is None else mask.expand(B, H, Tq, Tk), causal, 0.25
        )
        want = multimax_attention(q, k, v, ranges, ts, mask=mask, is_causal=causal, scale=0.25, impl="eager")
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6, msg=name)
        if name.startswith("padding"):
            assert (got[1] == 0).all(), name  # fully masked rows -> 0


def test_fused_attention_is_what_auto_picks_for_inference(ops, monkeypatch):
    from mmserve.ops import multimax_attention
    from mmserve.ops.cpu_kernel import fused_attention_available

    if not fused_attention_available():
        pytest.skip("fused attention unavailable here")
    calls = []
    real = ops.attention_forward
    monkeypatch.setattr(torch.ops.mmserve_cpu, "attention_forward", lambda *a: calls.append(1) or real(*a))
    q, k, v = _qkv_views(2, 10, 3, 8)
    ranges, ts = (p.requires_grad_() for p in params(2))
    with torch.no_grad():
        multimax_attention(q, k, v, ranges, ts)
    assert len(calls) == 1
    # gradients needed: the eager path (its row op has a backward); values agree
    out = multimax_attention(q, k, v, ranges, ts)
    out.sum().backward()
    assert len(calls) == 1 and ranges.grad is not None
    # the switch that turns fused kernels off
    monkeypatch.setenv("MMSERVE_KERNELS", "reference")
    with torch.no_grad():
        multimax_attention(q, k, v, ranges, ts)
    assert len(calls) == 1


def test_export_of_attention_keeps_the_multimax_node(ops):
    """While torch.export traces, attention takes the eager path: one mmserve.multimax node, no
    mmserve_cpu op (what the ONNX exporter maps to mmserve.MultiMax)."""
    from mmserve.models.layers import SelfAttention

    block = SelfAttention(dim=24, num_heads=3).eval()
    program = torch.export.export(block, (torch.randn(2, 7, 24),))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("mmserve.multimax" in t for t in targets) == 1
    assert not any("mmserve_cpu" in t for t in targets)
    x = torch.randn(2, 7, 24)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), block(x), rtol=1e-5, atol=1e-6)
