"""The Triton MultiMax kernels, run by Triton's interpreter on CPU tensors (TRITON_INTERPRET=1), against
float64 references: forward and backward, all I/O dtypes, odd row lengths, both launch regimes (whole
rows in one tile, and column blocks with online softmax), masks (bool, additive, broadcast with zero
strides, fully masked rows), extremes. On a GPU the same tests run compiled on CUDA tensors with
MMSERVE_TRITON_TEST_DEVICE=cuda (benchmarks/gpu_check.py does that).

TRITON_INTERPRET must be on before Triton is first imported (see the comment at IN_PROCESS).
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _triton_state() -> str:
    """'absent' (not imported yet), 'interpreted' or 'compiled' (imported without the interpreter)."""
    if "triton" not in sys.modules:
        return "absent"
    import triton.language.standard as standard

    return "interpreted" if type(standard.max).__name__ == "InterpretedFunction" else "compiled"


# triton.jit picks the interpreter when a function is decorated, including Triton's own library
# functions (tl.max, tl.sum...) decorated when triton is first imported; so the switch must be on
# before the first `import triton`. If something in this process imported triton without it, these
# tests re-run themselves in a subprocess with the switch on (test_in_subprocess).
DEVICE = os.environ.get("MMSERVE_TRITON_TEST_DEVICE", "cpu")
ON_GPU = DEVICE != "cpu"
if ON_GPU and not torch.cuda.is_available():
    pytest.skip(f"MMSERVE_TRITON_TEST_DEVICE={DEVICE} but CUDA is not available", allow_module_level=True)
IN_PROCESS = ON_GPU or _triton_state() != "compiled"
kernels_module = ops_module = None
_previous = os.environ.get("TRITON_INTERPRET")
if IN_PROCESS:
    if not ON_GPU:
        os.environ["TRITON_INTERPRET"] = "1"  # stays on while this module runs (Triton re-reads it)
    pytest.importorskip("triton", reason="triton is not installed (pip install mmserve[gpu] or [dev])")
    import plugins.triton.kernels as kernels_module
    import plugins.triton.ops as ops_module

    if not ON_GPU and type(kernels_module.multimax_fwd_kernel).__name__ != "InterpretedFunction":
        kernels_module = importlib.reload(kernels_module)
        ops_module = importlib.reload(ops_module)

from mmserve.ops.backward import multimax_backward_reference  # noqa: E402
from mmserve.ops.reference import multimax_reference  # noqa: E402
from plugins.triton.launch import (  # noqa: E402
    BACKWARD_MAX_SINGLE_BLOCK,
    FORWARD_MAX_SINGLE_BLOCK,
    row_launch,
)

REPO = Path(__file__).resolve().parents[1]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}
LOOPING = 64  # max_single_block that forces the column-block regime on short test rows


@pytest.fixture(scope="module", autouse=True)
def _interpreter_switch():
    """Keep TRITON_INTERPRET on for this module's tests, then put back what was there."""
    if IN_PROCESS and not ON_GPU:
        os.environ["TRITON_INTERPRET"] = "1"
    yield
    if _previous is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _previous


@pytest.fixture(autouse=True)
def _seed(request):
    if not IN_PROCESS and request.node.name != "test_in_subprocess":
        pytest.skip("triton was imported without TRITON_INTERPRET in this process: see test_in_subprocess")
    torch.manual_seed(0)


def test_in_subprocess():
    """Runs this file again in a fresh interpreter with TRITON_INTERPRET=1 (only when needed)."""
    if IN_PROCESS:
        pytest.skip("the tests run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def params(order: int, seed: int = 0, scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2 * order, generator=g) * scale, torch.randn(2 * order, generator=g) * scale


def on(t):
    """Move a test tensor to the device under test (expanded masks: expand *after* moving)."""
    return t.to(DEVICE)


def reference(x, ranges, ts, mask=None):
    """float64 reference, on the CPU."""
    mask = None if mask is None else mask.cpu()
    return multimax_reference(x.cpu().double(), ranges.cpu().double(), ts.cpu().double(), -1, mask)


def close(got, want, **kwargs):
    torch.testing.assert_close(got.cpu().double(), want, **kwargs)


# ------------------------------------------------------------------------------------ launch plan


@pytest.mark.parametrize("n_cols", [1, 15, 16, 17, 197, 1024, 4097, 32000, 32768, 32769, 100_000])
@pytest.mark.parametrize("n_rows", [1, 3, 1000])
def test_launch_plan_covers_every_element(n_rows, n_cols):
    plan = row_launch(n_rows, n_cols)
    assert plan.block_n & (plan.block_n - 1) == 0 and plan.rows_per_program & (plan.rows_per_program - 1) == 0
    assert plan.programs * plan.rows_per_program >= n_rows
    assert (plan.programs - 1) * plan.rows_per_program < max(n_rows, 1)
    assert 1 <= plan.num_warps <= 32
    if n_cols <= FORWARD_MAX_SINGLE_BLOCK:
        assert plan.single_block and plan.block_n >= n_cols and plan.n_col_blocks == 1
    else:
        assert not plan.single_block and plan.n_col_blocks * plan.block_n >= n_cols
    assert not row_launch(n_rows, 9000, BACKWARD_MAX_SINGLE_BLOCK).single_block


# ------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("length", [1, 37, 197])
@pytest.mark.parametrize("max_single_block", [FORWARD_MAX_SINGLE_BLOCK, LOOPING])
def test_forward_matches_reference(dtype, order, length, max_single_block):
    x = on((torch.randn(5, length, dtype=torch.float64) * 3).to(dtype))
    ranges, ts = params(order, seed=order * 7 + length)
    y = ops_module.multimax_forward(x, ranges, ts, None, max_single_block=max_single_block)
    assert y.dtype == dtype and y.shape == x.shape
    close(y, reference(x, ranges, ts), rtol=0, atol=TOL[dtype])


def _masks(B, H, Q, K):
    g = torch.Generator().manual_seed(11)
    pad = torch.rand(B, 1, 1, K, generator=g) > 0.6
    pad[1] = True  # batch 1: every row fully masked
    causal = torch.ones(Q, K, dtype=torch.bool).triu(K - Q + 1)
    return {  # base tensors moved to the device first, then expanded: zero strides reach the kernel
        "padding (zero strides)": on(pad).expand(B, H, Q, K),
        "causal (broadcast over B, H)": on(causal).expand(B, H, Q, K),
        "padding | causal": on(pad | causal).expand(B, H, Q, K),
        "bool per element": on(torch.rand(B, H, Q, K, generator=g) > 0.5),
        "bool zero last stride": on(torch.rand(B, H, Q, 1, generator=g) > 0.5).expand(B, H, Q, K),
        "bool transposed": on(torch.rand(B, H, K, Q, generator=g) > 0.5).transpose(-1, -2),
        "additive float32": on(torch.randn(B, 1, Q, K, generator=g)).expand(B, H, Q, K),
        "additive -inf": on(torch.zeros(B, H, Q, K).masked_fill(pad, -math.inf)),
        "additive float16": on(torch.randn(1, H, 1, K, generator=g).half()).expand(B, H, Q, K),
    }


@pytest.mark.parametrize(
    "dtype, max_single_block",
    [(dtype, FORWARD_MAX_SINGLE_BLOCK) for dtype in DTYPES] + [(torch.float32, LOOPING)],
)
def test_masks(dtype, max_single_block):
    B, H, Q, K = 2, 2, 3, 77
    x = on((torch.randn(B, H, Q, K) * 2).to(dtype))
    ranges, ts = params(2, seed=3)
    for name, mask in _masks(B, H, Q, K).items():
        y = ops_module.multimax_forward(x, ranges, ts, mask, max_single_block=max_single_block)
        assert torch.isfinite(y).all(), name
        close(y, reference(x, ranges, ts, mask), rtol=0, atol=TOL[dtype], msg=name)
        if mask.dtype == torch.bool:
            assert (y[mask] == 0).all(), name


def test_mask_with_many_leading_dims_is_folded_or_copied():
    x = on(torch.randn(2, 3, 2, 2, 19))
    ranges, ts = params(2)
    for mask in (
        on(torch.rand(2, 1, 2, 1, 19) > 0.5).expand_as(x),  # does not fold into 3 leading dims: copied
        on(torch.rand(1, 1, 1, 1, 19) > 0.5).expand_as(x),  # folds
    ):
        y = ops_module.multimax_forward(x, ranges, ts, mask)
        close(y, reference(x, ranges, ts, mask), rtol=0, atol=TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
def test_extremes(dtype):
    x = on((torch.rand(6, 97, dtype=torch.float64) * 2e4 - 1e4).to(dtype))
    ranges, ts = params(2, scale=1.0)
    for block in (FORWARD_MAX_SINGLE_BLOCK, LOOPING):
        y = ops_module.multimax_forward(x, ranges, ts, None, max_single_block=block)
        assert torch.isfinite(y).all()
        close(y, reference(x, ranges, ts), rtol=0, atol=TOL[dtype])


# ------------------------------------------------------------------------------------ backward


BACKWARD_CASES = [(d, o, n, BACKWARD_MAX_SINGLE_BLOCK) for d in DTYPES for o in (0, 1, 2, 3) for n in (1, 37, 197)]
BACKWARD_CASES += [(torch.float32, o, 150, LOOPING) for o in (0, 1, 2, 3)] + [(torch.bfloat16, 2, 150, LOOPING)]


@pytest.mark.parametrize("dtype, order, length, max_single_block", BACKWARD_CASES)
def test_backward_matches_reference(dtype, order, length, max_single_block):
    x = on((torch.randn(9, length, dtype=torch.float64) * 2).to(dtype))
    ranges, ts = params(order, seed=order * 13 + length)
    mask = torch.rand(9, length) > 0.7
    mask[4] = True  # one fully masked row
    y = ops_module.multimax_forward(x, ranges, ts, on(mask))
    g = on(torch.randn(9, length, dtype=torch.float64).to(dtype))
    dx, dr, dt = ops_module.multimax_backward(g, y, x, ranges, ts, max_single_block=max_single_block)
    assert dx.dtype == dtype and dr.dtype == ranges.dtype and dt.dtype == ts.dtype
    assert dr.shape == ranges.shape and dt.shape == ts.shape
    want = multimax_backward_reference(
        g.cpu().double(), y.cpu().double(), x.cpu().double(), ranges.double(), ts.double(), -1
    )
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    for got, exp in zip((dx, dr, dt), want):
        scale = max(1.0, exp.abs().max().item()) if exp.numel() else 1.0
        close(got, exp, rtol=tol, atol=tol * scale)
    assert (dx[4] == 0).all()


def test_backward_is_deterministic():
    x = on(torch.randn(6, 150) * 2)
    ranges, ts = params(3, seed=1)
    y = ops_module.multimax_forward(x, ranges, ts)
    g = on(torch.randn(6, 150))
    first = ops_module.multimax_backward(g, y, x, ranges, ts, max_single_block=LOOPING)
    second = ops_module.multimax_backward(g, y, x, ranges, ts, max_single_block=LOOPING)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_end_to_end_autograd_against_float64_autograd():
    """The kernel pair used as forward/backward of one op gives autograd's float64 gradients."""
    x64 = torch.randn(4, 3, 29, dtype=torch.float64) * 2
    r64, t64 = (p.double() for p in params(2, seed=9))
    g = torch.randn(4, 3, 29, dtype=torch.float64)
    leaves = [x64.clone().requires_grad_(), r64.clone().requires_grad_(), t64.clone().requires_grad_()]
    (multimax_reference(*leaves) * g).sum().backward()
    x = on(x64.float())
    y = ops_module.multimax_forward(x, r64.float(), t64.float())
    dx, dr, dt = ops_module.multimax_backward(on(g.float()), y, x, r64.float(), t64.float())
    for got, leaf in zip((dx, dr, dt), leaves):
        close(got, leaf.grad, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ wiring


def test_registered_for_cuda_tensors():
    from mmserve.ops import kernels

    providers = {p.name: p for p in kernels._providers["cuda"]}
    assert "triton" in providers
    kernel = providers["triton"].load()
    assert kernel.name == "triton" and kernel.backward is not None
    assert kernel.supports(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert not kernel.supports(torch.zeros(2, 3, dtype=torch.float64), None)  # float64 -> reference


def test_through_the_custom_op_with_autograd():
    """mmserve.ops.multimax on tensors of the device under test: on CUDA this dispatches to the
    Triton provider; on CPU the kernel pair is driven through autograd.Function directly."""
    x64 = torch.randn(3, 4, 33, dtype=torch.float64) * 2
    r64, t64 = (p.double() for p in params(2, seed=4))
    mask = torch.rand(3, 1, 33) > 0.7
    g = torch.randn(3, 4, 33, dtype=torch.float64)
    leaves = [x64.clone().requires_grad_(), r64.clone().requires_grad_(), t64.clone().requires_grad_()]
    (multimax_reference(*leaves, -1, mask) * g).sum().backward()
    x = on(x64.float()).requires_grad_()
    r = on(r64.float()).requires_grad_()
    t = on(t64.float()).requires_grad_()
    if ON_GPU:
        from mmserve.ops import multimax
        from mmserve.ops.kernels import select_kernel

        assert select_kernel(x, None).name == "triton"
        y = multimax(x, r, t, mask=on(mask))
    else:

        class _Op(torch.autograd.Function):
            @staticmethod
            def forward(ctx, a, rr, tt):
                out = ops_module.multimax_forward(a, rr, tt, mask.expand(a.shape))
                ctx.save_for_backward(out, a, rr, tt)
                return out

            @staticmethod
            def backward(ctx, grad):
                out, a, rr, tt = ctx.saved_tensors
                return ops_module.multimax_backward(grad.contiguous(), out, a, rr, tt)

        y = _Op.apply(x, r, t)
    (y * on(g.float())).sum().backward()
    for got, leaf in zip((x.grad, r.grad, t.grad), leaves):
        close(got, leaf.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # a fresh interpreter imports torch (~5 s)
def test_mmserve_imports_and_runs_without_triton():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('triton blocked for this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, mmserve.ops as ops\n"
        "from mmserve.ops import kernels\n"
        "x = torch.randn(2, 5)\n"
        "assert torch.allclose(ops.multimax(x, torch.zeros(4), torch.zeros(4)), torch.softmax(x, -1), atol=1e-6)\n"
        "p = [p for p in kernels._providers['cuda'] if p.name == 'triton'][0]\n"
        "assert kernels._ensure_loaded(p) is None and 'triton' in p.error, p.error\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
