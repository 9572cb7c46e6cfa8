"""The MultiMax op as users call it: `mmserve.ops.multimax` (custom op + whatever fused kernel is
registered for the device, the C++ kernel on CPU when it builds) against float64 references.

The float64 references here are written independently of `mmserve.ops.reference` (plain Python floats
for the formula; torch.softmax for the SoftMax reductions), so the reference itself is checked too.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmserve.ops import MultiMax, multimax, multimax_reference, seglu
from mmserve.ops.kernels import select_kernel

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# Tolerances on probabilities (values in [0, 1]) by input dtype: the output is rounded to that dtype.
ATOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

def params(order: int, seed: int = 0, scale: float = 0.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    ranges = torch.randn(2 * order, generator=g, dtype=dtype) * scale
    ts = torch.randn(2 * order, generator=g, dtype=dtype) * scale
    return ranges, ts


def formula_seglu(v: float, ranges, ts) -> float:
    """DESIGN.md's formula, scalar by scalar in Python floats."""
    out = v
    for n in range(1, len(ranges) // 2 + 1):
        out += float(ts[2 * n - 2]) * max(float(ranges[2 * n - 2]) - v, 0.0) ** n
        out += float(ts[2 * n - 1]) * max(v - float(ranges[2 * n - 1]), 0.0) ** n
    return out


def formula_multimax(x: torch.Tensor, ranges, ts, mask=None) -> torch.Tensor:
    """float64 softmax(seglu(x)) along the last axis, masks after the modulator, via Python floats."""
    z = torch.tensor([formula_seglu(v, ranges, ts) for v in x.double().flatten().tolist()], dtype=torch.float64)
    z = z.view(x.shape)
    if mask is not None:
        z = z.masked_fill(mask, -math.inf) if mask.dtype == torch.bool else z + mask.double()
    y = torch.softmax(z, dim=-1)
    return torch.nan_to_num(y, nan=0.0)  # torch.softmax gives NaN for an all -inf row; MultiMax gives 0


def fused_active() -> bool:
    return select_kernel(torch.zeros(2, 2), None) is not None


# ------------------------------------------------------------------------------------ values


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_reference_matches_formula(order):
    x = torch.randn(3, 11, dtype=torch.float64) * 2
    ranges, ts = params(order, seed=order)
    expected = formula_multimax(x, ranges, ts)
    torch.testing.assert_close(multimax_reference(x, ranges, ts), expected, rtol=0, atol=1e-12)
    z = torch.tensor([formula_seglu(v, ranges, ts) for v in x.flatten().tolist()], dtype=torch.float64)
    torch.testing.assert_close(seglu(x, ranges, ts), z.view(x.shape), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("length", [1, 7, 16, 33, 197])
def test_op_matches_float64_formula(dtype, order, length):
    x = (torch.randn(4, length, dtype=torch.float64) * 3).to(dtype)
    ranges, ts = params(order, seed=length)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32  # parameters as models hold them
    ranges, ts = ranges.to(pdtype), ts.to(pdtype)
    y = multimax(x, ranges, ts)
    assert y.dtype == dtype and y.shape == x.shape
    expected = formula_multimax(x.double(), ranges.double(), ts.double())
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_any_dim(dim):
    x = torch.randn(5, 6, 7, dtype=torch.float64)
    ranges, ts = params(2)
    y = multimax(x, ranges, ts, dim=dim)
    expected = formula_multimax(x.movedim(dim, -1), ranges, ts).movedim(-1, dim)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_fused_kernel_is_used_on_cpu():
    """Guards against silently testing only the reference: the C++ kernel must load where a compiler
    exists (it is built by `mmserve kernels build` before the suite runs)."""
    from mmserve.ops.cpu_kernel import build

    try:
        build()
    except Exception as exc:  # pragma: no cover - machines without a compiler
        pytest.skip(f"C++ kernel cannot be built here: {exc}")
    assert fused_active()


# ------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bool_and_additive_masks(dtype):
    x = torch.randn(2, 3, 5, 19, dtype=dtype)
    ranges, ts = params(2, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    bool_mask = torch.rand(2, 3, 5, 19, generator=g) > 0.6
    additive = torch.where(bool_mask, -math.inf, torch.randn(2, 3, 5, 19, generator=g, dtype=torch.float64)).to(dtype)
    for mask in (bool_mask, additive):
        y = multimax(x, ranges, ts, mask=mask)
        expected = formula_multimax(x.double(), ranges.double(), ts.double(), mask)
        torch.testing.assert_close(y.double(), expected, rtol=0, atol=ATOL[dtype])
        assert (y[bool_mask] == 0).all()


@pytest.mark.parametrize(
    "mask_shape",
    [(2, 1, 1, 23), (1, 1, 5, 23), (2, 3, 5, 1), (23,), (5, 23), (2, 1, 5, 1), (1, 3, 1, 23)],
)
def test_broadcast_masks(mask_shape):
    """Padding/causal style masks broadcast over heads and queries (zero strides after expand)."""
    x = torch.randn(2, 3, 5, 23, dtype=torch.float64)
    ranges, ts = params(2)
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(3)) > 0.5
    y = multimax(x, ranges, ts, mask=mask)
    expected = formula_multimax(x, ranges, ts, mask.expand_as(x))
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_broadcast_mask_on_other_dim():
    x = torch.randn(4, 9, 6, dtype=torch.float64)
    ranges, ts = params(2)
    mask = torch.rand(1, 9, 1, generator=torch.Generator().manual_seed(4)) > 0.5
    y = multimax(x, ranges, ts, dim=1, mask=mask)
    expected = formula_multimax(x.movedim(1, -1), ranges, ts, mask.expand_as(x).movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_are_zero_with_zero_grad(dtype):
    x = torch.randn(3, 4, 17, dtype=torch.float64).to(dtype).requires_grad_()
    ranges, ts = (p.to(torch.float32).requires_grad_() for p in params(2))
    mask = torch.zeros(3, 4, 17, dtype=torch.bool)
    mask[1] = True  # every row of batch 1
    mask[2, 0] = True
    y = multimax(x, ranges, ts, mask=mask)
    assert torch.isfinite(y).all()
    assert (y[1] == 0).all() and (y[2, 0] == 0).all()
    torch.testing.assert_close(y[0].double().sum(-1), torch.ones(4, dtype=torch.float64), atol=ATOL[dtype] * 17, rtol=0)
    y.backward(torch.randn_like(y))
    assert torch.isfinite(x.grad).all() and (x.grad[1] == 0).all()
    assert torch.isfinite(ranges.grad).all() and torch.isfinite(ts.grad).all()

    additive = torch.zeros(3, 4, 17, dtype=torch.float32).masked_fill(mask, -math.inf)
    y2 = multimax(x.detach(), ranges.detach(), ts.detach(), mask=additive)
    assert torch.isfinite(y2).all() and (y2[1] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs_stay_finite(dtype):
    """|x| up to 1e4: the quadratic term reaches ~1e8; computed in float32 (float64), never inf/NaN."""
    x = torch.cat([torch.linspace(-1e4, 1e4, 257), torch.tensor([1e4, -1e4, 0.0])]).view(4, 65).to(dtype)
    ranges, ts = params(2, scale=1.0)
    ranges_c = ranges.to(torch.float64 if dtype == torch.float64 else torch.float32)
    ts_c = ts.to(ranges_c.dtype)
    y = multimax(x, ranges_c, ts_c)
    assert torch.isfinite(y).all()
    expected = formula_multimax(x.double(), ranges_c.double(), ts_c.double())
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=ATOL[dtype])
    xg = x.detach().to(torch.float32 if dtype != torch.float64 else dtype).requires_grad_()
    multimax(xg, ranges_c, ts_c).pow(2).sum().backward()
    assert torch.isfinite(xg.grad).all()


# ------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("order", [1, 2, 3])
def test_gradcheck(order):
    x = (torch.randn(3, 2, 9, dtype=torch.float64) * 1.5).requires_grad_()
    ranges, ts = (p.requires_grad_() for p in params(order, seed=10 + order))
    assert torch.autograd.gradcheck(lambda a, r, t: multimax(a, r, t), (x, ranges, ts))
    mask = torch.rand(3, 1, 9, generator=torch.Generator().manual_seed(0)) > 0.7
    assert torch.autograd.gradcheck(lambda a, r, t: multimax(a, r, t, dim=-1, mask=mask), (x, ranges, ts))
    assert torch.autograd.gradcheck(lambda a, r, t: multimax(a, r, t, dim=1), (x, ranges, ts))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_grads_match_float64_autograd(dtype):
    x64 = torch.randn(6, 41, dtype=torch.float64) * 2
    r64, t64 = params(2, seed=5)
    r64, t64 = r64.float().double(), t64.float().double()
    g64 = torch.randn(6, 41, dtype=torch.float64)
    xs = [x64.clone().requires_grad_(), r64.clone().requires_grad_(), t64.clone().requires_grad_()]
    (multimax_reference(*xs) * g64).sum().backward()
    x = x64.to(dtype).requires_grad_()
    r = r64.float().requires_grad_()
    t = t64.float().requires_grad_()
    (multimax(x, r, t) * g64.to(dtype)).sum().backward()
    # the reference is evaluated at the same (rounded) point
    xs2 = [x.detach().double().requires_grad_(), r64.clone().requires_grad_(), t64.clone().requires_grad_()]
    (multimax_reference(*xs2) * g64.to(dtype).double()).sum().backward()
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(x.grad.double(), xs2[0].grad, rtol=tol, atol=tol)
    torch.testing.assert_close(r.grad.double(), xs2[1].grad, rtol=tol, atol=tol * 10)
    torch.testing.assert_close(t.grad.double(), xs2[2].grad, rtol=tol, atol=tol * 10)


# ------------------------------------------------------------------------------------ properties


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    order=st.integers(0, 3),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    masked=st.booleans(),
)
def test_rows_sum_to_one_or_zero(shape, order, seed, dtype, masked):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 4).to(dtype)
    ranges, ts = params(order, seed=seed)
    ranges, ts = ranges.to(dtype), ts.to(dtype)
    mask = torch.rand(shape, generator=g) > 0.5 if masked else None
    y = multimax(x, ranges, ts, mask=mask)
    sums = y.double().sum(-1)
    expected = torch.ones_like(sums)
    if mask is not None:
        expected = (~mask.all(-1)).double()
        assert (y[mask] == 0).all()
    torch.testing.assert_close(sums, expected, rtol=0, atol=1e-5)
    assert (y >= 0).all()


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 8), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_order_zero_and_zero_ts_reduce_to_softmax(shape, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    expected = torch.softmax(x.double(), dim=-1)
    empty = torch.empty(0, dtype=dtype)
    torch.testing.assert_close(multimax(x, empty, empty).double(), expected, rtol=0, atol=ATOL[dtype])
    ranges = torch.randn(4, generator=g, dtype=dtype)
    torch.testing.assert_close(
        multimax(x, ranges, torch.zeros(4, dtype=dtype)).double(), expected, rtol=0, atol=ATOL[dtype]
    )


# ------------------------------------------------------------------------------------ graphs


def _mmserve_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and "mmserve.multimax" in str(n.target)]


def test_torch_compile_fullgraph_sees_one_node():
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    module = MultiMax(order=2)
    x = torch.randn(2, 3, 8)
    mask = torch.rand(2, 1, 8) > 0.5
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=capture, fullgraph=True)
    y = compiled(x, mask)
    assert len(graphs) == 1
    calls = [n for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert len(_mmserve_nodes(graphs[0].graph)) == 1
    assert not any("relu" in str(n.target) or "pow" in str(n.target) for n in calls)
    torch.testing.assert_close(y, module(x, mask))


def test_torch_compile_aot_eager_values_and_grads():
    module = MultiMax(order=2)
    x = torch.randn(3, 4, 10, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    g = torch.randn(3, 4, 10)
    (compiled(x) * g).sum().backward()
    grads = [x.grad.clone(), module.ranges.grad.clone(), module.ts.grad.clone()]
    x.grad = None
    module.zero_grad()
    (module(x) * g).sum().backward()
    for a, b in zip(grads, [x.grad, module.ranges.grad, module.ts.grad]):
        torch.testing.assert_close(a, b)


def test_torch_export_sees_one_node():
    module = MultiMax(order=2).eval()
    x = torch.randn(2, 5, 7)
    program = torch.export.export(module, (x,))
    nodes = _mmserve_nodes(program.graph)
    assert len(nodes) == 1
    assert str(nodes[0].target).startswith("mmserve.multimax")
    torch.testing.assert_close(program.module()(x), module(x))
