"""TensorRT plugin and engine export.

Two kinds of tests live here:

- the parts that need no TensorRT, tested for real on this CPU-only machine: attribute parsing and
  its errors, launch geometry, dtype mapping, optimisation profiles, the ONNX rewrite that maps
  MultiMax nodes onto the plugin (checked end to end with onnxruntime), the PTX the AOT path hands
  TensorRT (compiled by Triton and assembled by its bundled ptxas), and the exact Triton kernel +
  grid the plugin launches, run under TRITON_INTERPRET=1 on CPU tensors against a float64 reference;
- tests marked `tensorrt` that build engines for the bundled models and check parity on a GPU; they
  skip with "tensorrt not installed" (or "no CUDA GPU") where TensorRT is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from exporters.tensorrt.graph import GraphPreparationError, prepare_for_tensorrt
from exporters.tensorrt.profiles import DimRange, ProfileError, input_profiles, parse_range
from mmserve.errors import UserError
from plugins.tensorrt import MASKED_PLUGIN_NAME, PLUGIN_NAME, PLUGIN_NAMESPACE
from plugins.tensorrt.attrs import (
    MultiMaxAttributeError,
    from_onnx_node,
    from_plugin_fields,
    permutation_to_last,
    resolve_axis,
)
from plugins.tensorrt.dtypes import element_type, trt_type_name

REPO = Path(__file__).resolve().parents[1]
RANGES = [0.1, -0.2, 0.3, 0.05]
TS = [0.02, -0.01, 0.03, 0.04]


# --------------------------------------------------------------------------------------------------
# attributes
# --------------------------------------------------------------------------------------------------


def _node(**attrs):
    return helper.make_node("MultiMax", ["X"], ["Y"], domain="mmserve", name="mm", **attrs)


def test_attributes_from_onnx_node():
    attrs = from_onnx_node(_node(axis=2, ranges=RANGES, ts=TS))
    assert attrs.axis == 2 and attrs.order == 2
    assert attrs.ranges == pytest.approx(tuple(RANGES)) and attrs.ts == pytest.approx(tuple(TS))
    assert from_onnx_node(_node(ranges=RANGES, ts=TS)).axis == -1  # spec default
    written = attrs.onnx_attributes()
    assert set(written) == {"axis", "ranges", "ts"}


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"ts": TS}, "'ranges' is missing"),
        ({"ranges": RANGES}, "'ts' is missing"),
        ({"ranges": RANGES, "ts": TS[:2]}, "same length"),
        ({"ranges": RANGES[:3], "ts": TS[:3]}, "2N values"),
        ({"ranges": [0.0] * 18, "ts": [0.0] * 18}, "above the fused kernel's maximum"),
        ({"ranges": [float("nan"), 0, 0, 0], "ts": TS}, "non-finite"),
        ({"ranges": RANGES, "ts": TS, "axis": 1.5}, "must be of type INT"),
    ],
)
def test_attribute_errors_name_the_node(attrs, message):
    with pytest.raises(MultiMaxAttributeError, match=message) as info:
        from_onnx_node(_node(**attrs))
    assert "'mm'" in str(info.value)
    assert isinstance(info.value, UserError)  # the CLI prints it as one line


def test_attributes_from_plugin_fields_match_parser_types():
    # The TensorRT ONNX parser hands an INT attribute as int32 and FLOATS as a float32 array.
    attrs = from_plugin_fields(np.int32(-1), np.asarray(RANGES, np.float32), np.asarray(TS, np.float32))
    assert attrs.axis == -1 and attrs.order == 2
    assert attrs.ranges == pytest.approx(tuple(np.float32(RANGES)))
    with pytest.raises(MultiMaxAttributeError, match="same length"):
        from_plugin_fields(-1, np.zeros(4, np.float32), np.zeros(2, np.float32))


def test_axis_resolution_and_permutation():
    assert resolve_axis(-1, 4) == 3 and resolve_axis(1, 4) == 1
    with pytest.raises(MultiMaxAttributeError, match="out of range"):
        resolve_axis(4, 4)
    with pytest.raises(MultiMaxAttributeError, match="at least one dimension"):
        resolve_axis(-1, 0)
    perm, inverse = permutation_to_last(1, 4)
    assert perm == [0, 2, 3, 1]
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert np.array_equal(x.transpose(perm).transpose(inverse), x)
    assert np.array_equal(x.transpose(perm)[:, :, :, 2], x[:, 2])


def test_dtype_table():
    assert element_type("FLOAT").triton_pointer == "*fp32"
    assert element_type("DataType.HALF").autotune == "FP16"
    assert element_type("fp16").torch == "float16"
    assert trt_type_name(type("FakeDataType", (), {"name": "BOOL"})()) == "BOOL"
    assert element_type("BOOL").itemsize == 1
    with pytest.raises(TypeError, match="unsupported TensorRT data type 'FP8'"):
        element_type("FP8")


# --------------------------------------------------------------------------------------------------
# optimisation profiles
# --------------------------------------------------------------------------------------------------


def _model_with_inputs(*inputs):
    graph = helper.make_graph([helper.make_node("Identity", [inputs[0].name], ["out"])], "g", list(inputs),
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    return helper.make_model(graph)


def test_profiles_from_named_dims():
    model = _model_with_inputs(
        helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 1, 8, 8]),
        helper.make_tensor_value_info("src_ids", TensorProto.INT64, ["batch", "src_len"]),
    )
    profiles = input_profiles(model, {"batch": parse_range("1,8,32"), "src_len": DimRange(1, 16, 64)})
    assert profiles[0].min == (1, 1, 8, 8) and profiles[0].opt == (8, 1, 8, 8) and profiles[0].max == (32, 1, 8, 8)
    assert profiles[1].max == (32, 64) and profiles[1].dynamic
    with pytest.raises(ProfileError, match="'src_len'"):
        input_profiles(model, {"batch": DimRange(1, 1, 1)})
    with pytest.raises(ProfileError, match="invalid dimension range"):
        parse_range("8,4,32")
    assert parse_range("4") == DimRange(4, 4, 4)


# --------------------------------------------------------------------------------------------------
# ONNX rewrite for the TensorRT parser, checked end to end with onnxruntime
# --------------------------------------------------------------------------------------------------


def _multimax_model():
    """Four MultiMax nodes: plain, masked, non-last axis, masked + non-last axis (mask broadcast)."""
    from exporters.onnx.op import MASKED_OVERLOAD

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3, 5, 7])
    m = helper.make_tensor_value_info("M", TensorProto.BOOL, ["batch", 1, 1, 7])
    outs = [helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, None) for i in range(4)]
    common = {"domain": "mmserve", "ranges": RANGES, "ts": TS}
    nodes = [
        helper.make_node("MultiMax", ["X"], ["Y0"], name="plain", **common),
        helper.make_node("MultiMax", ["X", "M"], ["Y1"], name="masked", axis=3, overload=MASKED_OVERLOAD, **common),
        helper.make_node("MultiMax", ["X"], ["Y2"], name="axis1", axis=1, **common),
        helper.make_node("MultiMax", ["X", "M"], ["Y3"], name="masked_axis2", axis=-2, overload=MASKED_OVERLOAD, **common),
    ]
    graph = helper.make_graph(nodes, "g", [x, m], outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("mmserve", 1)],
                             ir_version=10)


def _with_function_bodies(proto):
    import onnx_ir as ir

    from exporters.onnx.functions import build_multimax_function

    model = ir.from_proto(proto)
    for masked in (False, True):
        function = build_multimax_function(2, masked, 18)
        model.functions[function.identifier()] = function
    return ir.to_proto(model)


def _plugin_graph_for_onnxruntime(prepared):
    """Undo only the renaming (plugin op types/attributes) and attach the reference function bodies,
    so onnxruntime evaluates exactly the Transpose/Expand wiring the rewrite produced."""
    from exporters.onnx.op import MASKED_OVERLOAD

    model = onnx.ModelProto()
    model.CopyFrom(prepared)
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.domain == "mmserve":
            masked = node.op_type == MASKED_PLUGIN_NAME
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            # the plugin's last input carries the same constants as the attributes: ranges then ts
            params = initializers[node.input[-1]]
            assert params.dtype == np.float32
            np.testing.assert_array_equal(params, np.float32(list(attrs["ranges"]) + list(attrs["ts"])))
            inputs = list(node.input[:-1])
            del node.input[:]
            node.input.extend(inputs)
            node.op_type = "MultiMax"
            node.overload = MASKED_OVERLOAD if masked else ""
            keep = [a for a in node.attribute if a.name in ("axis", "ranges", "ts")]
            del node.attribute[:]
            node.attribute.extend(keep)
    return _with_function_bodies(model)


def test_rewrite_maps_nodes_onto_the_plugins():
    original = _with_function_bodies(_multimax_model())
    prepared = prepare_for_tensorrt(original, aot=True)
    assert not prepared.model.functions  # the parser would inline a local function instead of the plugin
    assert sorted(prepared.removed_functions) == ["mmserve.MultiMax", "mmserve.MultiMax:masked"]
    plugin_nodes = [n for n in prepared.model.graph.node if n.domain == "mmserve"]
    assert [n.op_type for n in plugin_nodes] == [PLUGIN_NAME, MASKED_PLUGIN_NAME, PLUGIN_NAME, MASKED_PLUGIN_NAME]
    assert [len(n.input) for n in plugin_nodes] == [2, 3, 2, 3]  # X, [mask], params
    params = {t.name: onnx.numpy_helper.to_array(t) for t in prepared.model.graph.initializer}
    for node in plugin_nodes:
        np.testing.assert_array_equal(params[node.input[-1]], np.float32(RANGES + TS))
    for node in plugin_nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == PLUGIN_NAMESPACE.encode() and attrs["aot"] == 1
        assert attrs["axis"] == -1  # every plugin node normalises along the last axis
        assert attrs["ranges"] == pytest.approx(RANGES)
    assert [p.transposed for p in prepared.nodes] == [False, False, True, True]
    ops = [n.op_type for n in prepared.model.graph.node]
    assert ops.count("Transpose") == 5 and ops.count("Expand") == 2
    assert prepare_for_tensorrt(original, aot=None).model.graph.node[0].attribute  # no "aot" when None
    assert all(a.name != "aot" for a in prepare_for_tensorrt(original, aot=None).model.graph.node[0].attribute)


def test_rewritten_graph_computes_the_same_probabilities():
    import onnxruntime as ort

    from mmserve.ops.reference import multimax_reference

    original = _with_function_bodies(_multimax_model())
    rewritten = _plugin_graph_for_onnxruntime(prepare_for_tensorrt(original).model)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 5, 7)) * 3).astype(np.float32)
    mask = rng.random((2, 1, 1, 7)) < 0.3
    mask[..., 0] = False
    feeds = {"X": x, "M": mask}
    want = ort.InferenceSession(original.SerializeToString()).run(None, feeds)
    got = ort.InferenceSession(rewritten.SerializeToString()).run(None, feeds)
    xt, mt = torch.from_numpy(x).double(), torch.from_numpy(mask)
    r, t = torch.tensor(RANGES), torch.tensor(TS)
    refs = [
        multimax_reference(xt, r, t, -1),
        multimax_reference(xt, r, t, 3, mt),
        multimax_reference(xt, r, t, 1),
        multimax_reference(xt, r, t, -2, mt.expand(2, 3, 5, 7)),
    ]
    for a, b, ref in zip(want, got, refs):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(b, ref.numpy(), atol=1e-6)


def test_rewrite_errors():
    model = _multimax_model()
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    del bad.graph.node[0].attribute[:]
    with pytest.raises(GraphPreparationError, match="'plain'.*'ranges' is missing"):
        prepare_for_tensorrt(bad, source="model.onnx")
    unknown_rank = onnx.ModelProto()
    unknown_rank.CopyFrom(model)
    unknown_rank.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(GraphPreparationError, match="'masked': axis=3 needs the rank of input 'X'"):
        prepare_for_tensorrt(unknown_rank)


# --------------------------------------------------------------------------------------------------
# launch geometry (pure arithmetic, evaluated by TensorRT on symbolic sizes at run time)
# --------------------------------------------------------------------------------------------------


class _SymbolicSize:
    """Stands in for tensorrt.plugin.ShapeExpr: `expr * expr` and `expr * int` only (no `int * expr`)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __mul__(self, other):
        return _SymbolicSize(self.value * (other.value if isinstance(other, _SymbolicSize) else other))


def test_row_count_expression_matches_concrete_shapes():
    from plugins.tensorrt.geometry import row_count_expr, row_geometry

    for shape in [(7,), (4, 10), (2, 3, 5, 7), (8, 6, 197, 197)]:
        geometry = row_geometry(shape)
        assert geometry.n_rows == int(np.prod(shape[:-1])) and geometry.n_cols == shape[-1]
        symbolic = row_count_expr([_SymbolicSize(d) for d in shape])
        assert (symbolic if isinstance(symbolic, int) else symbolic.value) == geometry.n_rows
    with pytest.raises(MultiMaxAttributeError, match="not the last axis"):
        row_geometry((2, 3), axis=0)


def test_row_length_bound_reads_the_profile_maximum():
    from plugins.tensorrt.geometry import static_row_count_bound, static_row_length_bound

    class Shape(list):  # tensorrt.plugin.Shape: -1 for dynamic dims, .max from the profile
        is_dynamic = True
        max = (8, 4, 64, 128)

    assert static_row_length_bound(Shape([2, 4, 64, 32])) == 32
    assert static_row_length_bound(Shape([-1, 4, 64, -1])) == 128
    assert static_row_count_bound(Shape([-1, 4, 64, -1])) == 8 * 4 * 64
    assert static_row_count_bound(Shape([2, 4, 64, 32])) == 2 * 4 * 64


def test_kernel_plan_properties():
    """The AOT tile plan (the Triton row kernel's own `row_launch`, asked with the profile's maximum
    rows/row length) must cover any actual shape up to those maxima."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from plugins.tensorrt.kernel import grid, plan_kernel
    from plugins.triton.launch import FORWARD_MAX_SINGLE_BLOCK

    @settings(max_examples=200, deadline=None)
    @given(st.integers(1, 100_000), st.integers(1, 1 << 20), st.data())
    def check(max_cols, max_rows, data):
        plan = plan_kernel(max_cols, max_rows)
        n_cols = data.draw(st.integers(1, max_cols))
        n_rows = data.draw(st.integers(1, max_rows))
        assert plan.rows_per_program & (plan.rows_per_program - 1) == 0  # tl.arange needs powers of two
        assert plan.block_n & (plan.block_n - 1) == 0 and plan.num_warps in (1, 2, 4, 8, 16, 32)
        if plan.single_block:  # whole rows in one tile: the tile must hold the longest row
            assert max_cols <= FORWARD_MAX_SINGLE_BLOCK and plan.block_n >= n_cols
        programs = grid(n_rows, plan)
        assert (programs - 1) * plan.rows_per_program < n_rows <= programs * plan.rows_per_program

    check()
    with pytest.raises(MultiMaxAttributeError, match="row length must be positive"):
        plan_kernel(0)


# --------------------------------------------------------------------------------------------------
# the exact kernel + grid TensorRT launches, under TRITON_INTERPRET=1 on CPU tensors
# --------------------------------------------------------------------------------------------------

_INTERPRET_SCRIPT = r"""
import json, torch
from plugins.tensorrt.attrs import from_plugin_fields
from plugins.tensorrt.kernel import launch_jit, plan_kernel
from plugins.tensorrt.kernel_params import pack_params
from mmserve.ops.reference import multimax_reference

constants = {
    "order2": ([0.1, -0.2, 0.3, 0.05], [0.5, -0.3, 0.2, 0.1]),
    "order1": ([0.4, -0.6], [0.9, 0.3]),
    "order4": ([0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 0.05, 0.0], [0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001, 0.0005]),
}
g = torch.Generator().manual_seed(0)
results = []
for shape, scale in [((7,), 3.0), ((4, 10), 3.0), ((3, 33), 30.0), ((2, 3, 5, 7), 3.0), ((2, 2, 17, 17), 3.0),
                     ((5, 1), 3.0), ((1, 300), 3.0), ((3, 197), 300.0), ((130, 16), 3.0), ((2, 9000), 3.0)]:
    # Rows above 32768 elements take the kernel's looping (online softmax) regime; interpreting such a
    # row is slow, so the regime is exercised on a 9000-element row (3 column blocks) by lowering the
    # single-block limit.
    long_row = shape[-1] > 4096
    for name, (ranges, ts) in constants.items():
        attrs = from_plugin_fields(-1, ranges, ts)
        params = torch.tensor(pack_params(attrs.ranges, attrs.ts), dtype=torch.float32)
        r64, t64 = torch.tensor(ranges, dtype=torch.float64), torch.tensor(ts, dtype=torch.float64)
        for dtype in (torch.float32, torch.float16):
            x = (torch.randn(shape, generator=g) * scale).to(dtype)
            mask = torch.rand(shape, generator=g) < 0.3
            mask.view(-1, shape[-1])[0] = True  # a fully masked row
            y = torch.empty_like(x)
            ym = torch.empty_like(x)
            # the AOT plan: sized for the profile's maxima (here 4x the rows, the same row length)
            plan = plan_kernel(shape[-1], 4 * x.numel() // shape[-1], max_single_block=4096 if long_row else 32768)
            launch_jit(x, None, params, y, attrs.order, plan)
            launch_jit(x, mask, params, ym, attrs.order, plan)
            ref = multimax_reference(x.double(), r64, t64)
            refm = multimax_reference(x.double(), r64, t64, mask=mask)
            results.append({
                "shape": list(shape), "params": name, "dtype": str(dtype), "single_block": plan.single_block,
                "err": (y.double() - ref).abs().max().item(),
                "err_masked": (ym.double() - refm).abs().max().item(),
                "masked_nonzero": bool((ym[mask] != 0).any()),
                "full_row_max": ym.view(-1, shape[-1])[0].abs().max().item(),
                "finite": bool(torch.isfinite(y).all() and torch.isfinite(ym).all()),
                "row_sum_err": (y.double().sum(-1) - 1).abs().max().item(),
            })
print(json.dumps(results))
"""


def _run_python(script: str, env_extra: dict, extra_path: str | None = None, timeout: int = 240) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MMSERVE_TRT_PTX_TARGET")}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1]


def test_plugin_kernel_matches_float64_reference_under_the_triton_interpreter():
    """The entry points, plan, grid and constexprs of the AOT/JIT launch, run by Triton's interpreter."""
    results = json.loads(_run_python(_INTERPRET_SCRIPT, {"TRITON_INTERPRET": "1"}))
    assert len(results) == 10 * 3 * 2
    assert any(not r["single_block"] for r in results)  # the long-row (online softmax) regime ran too
    for r in results:
        tol = 1e-6 if r["dtype"] == "torch.float32" else 1e-3  # fp16 output rounding (~2^-11 near 0.5)
        assert r["finite"], r
        assert r["err"] <= tol and r["err_masked"] <= tol, r
        assert not r["masked_nonzero"] and r["full_row_max"] == 0.0, r  # masked -> exactly 0, no NaN
        assert r["row_sum_err"] <= (1e-5 if r["dtype"] == "torch.float32" else 5e-3), r


# --------------------------------------------------------------------------------------------------
# the plugin definitions, driven through a stand-in for the documented `tensorrt.plugin` API
# --------------------------------------------------------------------------------------------------

_FAKE_TENSORRT = r'''
"""Stand-in for the parts of `tensorrt` the plugin module touches (tests only)."""
__version__ = "0.0-stand-in"

class _DataType:
    def __init__(self, name):
        self.name = name
    def __repr__(self):
        return f"DataType.{self.name}"

class DataType:
    FLOAT = _DataType("FLOAT")
    HALF = _DataType("HALF")
    BOOL = _DataType("BOOL")

float32, float16 = DataType.FLOAT, DataType.HALF

def get_plugin_registry():
    return object()
'''

_FAKE_TENSORRT_PLUGIN = r'''
"""Stand-in for `tensorrt.plugin`, following the documented semantics: decorators record the
functions; ShapeExpr supports expr*expr and expr*int but not int*expr; cdiv needs an expression."""
REGISTRY = {}

def _decorator(kind):
    def outer(plugin_id):
        def inner(fn):
            REGISTRY.setdefault(plugin_id, {})[kind] = fn
            return fn
        return inner
    return outer

register, impl, aot_impl, autotune = (_decorator(k) for k in ("register", "impl", "aot_impl", "autotune"))

class ShapeExpr:
    def __init__(self, value):
        self.value = value.value if isinstance(value, ShapeExpr) else int(value)
    def __mul__(self, other):
        return ShapeExpr(self.value * (other.value if isinstance(other, ShapeExpr) else int(other)))

class SymInt32(ShapeExpr):
    pass

class SymExprs(list):
    pass

class SymIntExprs(SymExprs):
    @classmethod
    def from_tuple(cls, items):
        items = list(items)
        assert all(isinstance(i, SymInt32) for i in items), "extra args must be SymInt32"
        return cls(items)

def cdiv(a, b):
    assert isinstance(a, ShapeExpr), "cdiv needs a symbolic first operand"
    return ShapeExpr(-(-a.value // int(b)))

class KernelLaunchParams:
    def __init__(self):
        self.grid_x = self.grid_y = self.grid_z = self.block_x = self.block_y = self.block_z = 1
        self.shared_mem = 0

class AutoTuneCombination:
    def __init__(self, io_types=None, layouts=None, tactics=None):
        self.io_types, self.layouts, self.tactics = io_types, layouts, tactics

class Shape(list):
    def __init__(self, dims, max=None):
        super().__init__(dims)
        self.is_dynamic = any(d < 0 for d in dims)
        self.max = tuple(max or dims)

class TensorDesc:
    def __init__(self, dtype, shape_expr, shape=None):
        self.dtype, self.shape_expr, self.shape = dtype, list(shape_expr), shape
    @property
    def ndim(self):
        return len(self.shape_expr)
    def like(self):
        return TensorDesc(self.dtype, self.shape_expr, self.shape)

class Tensor:
    pass
'''

_AOT_SCRIPT = r"""
import inspect, json
import numpy as np
import tensorrt as trt
import tensorrt.plugin as trtp
from plugins.tensorrt import qdp
from plugins.tensorrt.ptx import assemble, entry_params

R = np.asarray([0.1, -0.2, 0.3, 0.05], np.float32)
T = np.asarray([0.5, -0.3, 0.2, 0.1], np.float32)
out = {"signatures": {pid: {kind: list(inspect.signature(fn).parameters) for kind, fn in kinds.items()}
                      for pid, kinds in trtp.REGISTRY.items()}}
dims = (3, 4, 16, 16)
shape = trtp.Shape([-1, 4, 16, -1], max=(8, 4, 16, 64))  # dynamic batch and row length, profile max 64
params = trtp.TensorDesc(trt.DataType.FLOAT, [trtp.ShapeExpr(8)], trtp.Shape([8]))
for pid, masked in (("mmserve::MultiMax", False), ("mmserve::MultiMaxMasked", True)):
    fns = trtp.REGISTRY[pid]
    x = trtp.TensorDesc(trt.DataType.HALF, [trtp.ShapeExpr(d) for d in dims], shape)
    inputs = (x, trtp.TensorDesc(trt.DataType.BOOL, x.shape_expr, shape), params) if masked else (x, params)
    y = fns["register"](*inputs, -1, R, T)
    name, ptx, launch, extra = fns["aot_impl"](*inputs, -1, R, T, (y,), 0)
    assemble(ptx, 80)
    tune = fns["autotune"](*inputs, (y,))
    try:
        fns["register"](*inputs, 1, R, T)
        axis_error = None
    except Exception as exc:
        axis_error = str(exc)
    try:
        short = trtp.TensorDesc(trt.DataType.FLOAT, [trtp.ShapeExpr(4)], trtp.Shape([4]))
        fns["aot_impl"](*inputs[:-1], short, -1, R, T, (y,), 0)
        params_error = None
    except Exception as exc:
        params_error = str(exc)
    out[pid] = {
        "output_dtype": y.dtype.name, "kernel": name, "ptx_params": len(entry_params(ptx, name)),
        "grid_x": launch.grid_x.value, "block_x": launch.block_x, "shared_mem": launch.shared_mem,
        "extra": [e.value for e in extra], "autotune": [(c.io_types, c.layouts) for c in tune],
        "axis_error": axis_error, "params_error": params_error, "ptx_target": ".target sm_80" in ptx,
    }
print(json.dumps(out))
"""


def test_plugin_definitions_produce_launchable_aot_kernels(tmp_path):
    """Runs plugins/tensorrt/qdp.py against a stand-in for `tensorrt.plugin` (TensorRT is not installable
    here): checks the decorated signatures against the documented schemas, and that aot_impl returns
    PTX whose entry takes exactly (inputs, n_rows, n_cols, output) with a grid covering every row."""
    from plugins.tensorrt.kernel import plan_kernel

    package = tmp_path / "tensorrt"
    package.mkdir()
    (package / "__init__.py").write_text(_FAKE_TENSORRT)
    (package / "plugin.py").write_text(_FAKE_TENSORRT_PLUGIN)
    out = json.loads(_run_python(_AOT_SCRIPT, {"MMSERVE_TRT_PTX_TARGET": "cuda:80"}, extra_path=str(tmp_path)))
    sig = out["signatures"]
    attrs = ["axis", "ranges", "ts"]
    # Schemas from the tensorrt.plugin docs: register (inputs, attrs); autotune (inputs, [attrs], outputs);
    # aot_impl (inputs, every attr in registration order, outputs, tactic); impl (inputs, attrs, outputs, stream).
    assert sig["mmserve::MultiMax"] == {
        "register": ["x", "params", *attrs], "autotune": ["x", "params", "outputs"],
        "aot_impl": ["x", "params", *attrs, "outputs", "tactic"], "impl": ["x", "params", *attrs, "outputs", "stream"],
    }
    assert sig["mmserve::MultiMaxMasked"]["aot_impl"] == ["x", "mask", "params", *attrs, "outputs", "tactic"]
    plan = plan_kernel(64, 8 * 4 * 16)  # the profile's maximum row length and row count
    rows = 3 * 4 * 16
    for pid, n_inputs in (("mmserve::MultiMax", 2), ("mmserve::MultiMaxMasked", 3)):
        r = out[pid]
        assert r["output_dtype"] == "HALF"  # output like input
        assert r["ptx_params"] == n_inputs + 2 + 1 and r["ptx_target"]
        assert r["extra"] == [rows, 16]  # n_rows, n_cols as evaluated by TensorRT for this shape
        assert r["grid_x"] == -(-rows // plan.rows_per_program)
        assert r["block_x"] == plan.num_warps * 32 and r["shared_mem"] >= 0
        assert "not the last axis" in r["axis_error"] and "prepare_for_tensorrt" in r["axis_error"]
        assert "params input holds 4 values, expected 8" in r["params_error"]
    assert out["mmserve::MultiMax"]["autotune"] == [["FP32|FP16, FP32, FP32|FP16", "LINEAR"]]
    assert out["mmserve::MultiMaxMasked"]["autotune"] == [["FP32|FP16, BOOL, FP32, FP32|FP16", "LINEAR"]]


# --------------------------------------------------------------------------------------------------
# a real export of the bundled classifier, prepared for TensorRT (checked on onnxruntime, CPU)
# --------------------------------------------------------------------------------------------------

DIGITS = REPO / "models" / "digits-vit"


@pytest.fixture(scope="module")
def digits_bodyless_graph():
    """model.onnx of the `--no-function-body` export TensorRT builds from (the exporter's own config and
    converter; the other graph of the export, explain.onnx, is left out to save time)."""
    from exporters.onnx.configs import ImageClassificationOnnxConfig
    from exporters.onnx.convert import convert_module, to_proto
    from mmserve.checkpoints import load_model_dir

    if not (DIGITS / "model.safetensors").is_file():
        pytest.skip("bundled model models/digits-vit is not trained yet")
    loaded = load_model_dir(DIGITS)
    config = ImageClassificationOnnxConfig(loaded.model, loaded.architecture)
    args = config.generate_dummy_inputs(config.export_shapes, torch.Generator().manual_seed(0))
    return to_proto(convert_module(config.graph_module(), args, config.spec(), function_body=False))


@pytest.mark.slow
def test_prepared_digits_export_matches_torch_in_fp32_and_fp16(digits_bodyless_graph):
    """The bundled ViT's export, rewritten for the plugin (fp32, and the fp16 copy the fp16 engine is built
    from), evaluated on onnxruntime with the reference MultiMax bodies standing in for the plugin kernel."""
    import onnxruntime as ort

    from exporters.tensorrt.builder import to_fp16
    from exporters.tensorrt.export import default_dim_ranges
    from mmserve.checkpoints import load_model_dir
    from mmserve.data.digits import heldout_pixel_values

    loaded = load_model_dir(DIGITS)
    prepared = prepare_for_tensorrt(digits_bodyless_graph)
    assert [n.plugin for n in prepared.nodes] == [PLUGIN_NAME] * (loaded.architecture.depth + 1)
    profiles = input_profiles(prepared.model, default_dim_ranges(loaded.config))
    assert [(p.name, p.min, p.opt, p.max) for p in profiles] == [("pixel_values", (1, 1, 8, 8), (8, 1, 8, 8), (32, 1, 8, 8))]

    pixel_values, _ = heldout_pixel_values(loaded.config, 64)
    with torch.no_grad():
        probs, _ = loaded.model.classify(pixel_values)
    probs = probs.numpy()
    feeds = {"pixel_values": pixel_values.numpy()}
    fp32 = ort.InferenceSession(_plugin_graph_for_onnxruntime(prepared.model).SerializeToString()).run(None, feeds)[0]
    half_graph = to_fp16(prepared.model)
    assert [i.type.tensor_type.elem_type for i in half_graph.graph.input] == [TensorProto.FLOAT]  # I/O kept fp32
    fp16 = ort.InferenceSession(_plugin_graph_for_onnxruntime(half_graph).SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(fp32, probs, atol=1e-5)
    assert np.abs(fp16 - probs).max() <= 1e-2  # the float16 tolerance row of `mmserve parity`
    assert (fp16.argmax(1) == probs.argmax(1)).mean() >= 0.98


def test_missing_tensorrt_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """Where TensorRT is absent (this project's machines), every entry point says so in one line."""
    from plugins.tensorrt.availability import TensorRTUnavailable, unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are available here; the error path does not apply")
    from exporters.parity_backends import BackendUnavailable, ParityContext
    from exporters.tensorrt.parity import load as parity_load
    from mmserve.checkpoints import read_config
    from plugins.tensorrt.serving import load as serving_load
    from mmserve.cli import main
    from server.backends import LoadOptions

    monkeypatch.setattr(sys, "argv", ["mmserve", "export", str(DIGITS), "--format", "tensorrt", "--out",
                                      str(tmp_path / "trt")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    assert "TensorRT is not installed" in stderr or "no CUDA GPU" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "trt").exists()
    with pytest.raises(TensorRTUnavailable, match="backend 'tensorrt' cannot load"):
        serving_load(tmp_path, "image-classification", LoadOptions())
    with pytest.raises(BackendUnavailable):
        parity_load(ParityContext(DIGITS, read_config(DIGITS)))


# --------------------------------------------------------------------------------------------------
# TensorRT + GPU: engines for the plugin alone and for the bundled models (skipped here)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trt():
    module = pytest.importorskip("tensorrt", reason="tensorrt not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False)")
    return module


def _single_op_model(masked: bool, axis: int, x_shape, mask_shape):
    """One MultiMax node (the ONNX op exactly as the exporter writes it) with dynamic batch."""
    from exporters.onnx.op import MASKED_OVERLOAD

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", *x_shape[1:]])
    inputs = [x]
    node_inputs = ["X"]
    if masked:
        inputs.append(helper.make_tensor_value_info("M", TensorProto.BOOL, ["batch", *mask_shape[1:]]))
        node_inputs.append("M")
    node = helper.make_node("MultiMax", node_inputs, ["Y"], domain="mmserve", name="mm", axis=axis, ranges=RANGES,
                            ts=TS, overload=MASKED_OVERLOAD if masked else "")
    graph = helper.make_graph([node], "single", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("mmserve", 1)],
                             ir_version=10)


@pytest.mark.tensorrt
@pytest.mark.slow
@pytest.mark.parametrize("aot", [True, False], ids=["aot", "python-impl"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("masked, axis", [(False, -1), (True, -1), (False, 1), (True, 2)],
                         ids=["plain", "masked", "axis1", "masked-axis2"])
def test_plugin_engine_matches_reference(trt, tmp_path, aot, precision, masked, axis):
    """mmserve::MultiMax(Masked) inside a TensorRT engine vs the float64 reference.
    Tolerances: fp32 engine 1e-5 abs; fp16 engine 2e-3 abs (fp16 I/O rounding, compute in fp32)."""
    from exporters.tensorrt.builder import build_engine, to_fp16
    from exporters.tensorrt.runtime import TrtEngine
    from mmserve.ops.reference import multimax_reference

    x_shape, mask_shape = (4, 3, 9, 33), (4, 1, 1, 33)
    prepared = prepare_for_tensorrt(_single_op_model(masked, axis, x_shape, mask_shape), aot=aot)
    graph = prepared.model if precision == "fp32" else to_fp16(prepared.model)
    onnx_path = tmp_path / "single.onnx"
    onnx.save_model(graph, str(onnx_path))
    profiles = input_profiles(graph, {"batch": DimRange(1, 4, 8)})
    result = build_engine(onnx_path, tmp_path / "single.engine", profiles, precision=precision)
    assert result.plugin_layers == 1  # the node became the plugin, not an inlined decomposition
    engine = TrtEngine(result.engine_path)
    g = torch.Generator().manual_seed(0)
    for batch in (1, 4, 8):
        x = torch.randn((batch, *x_shape[1:]), generator=g) * 4
        feeds = {"X": x}
        mask = None
        if masked:
            mask = torch.rand((batch, *mask_shape[1:]), generator=g) < 0.3
            mask[..., 0] = False
            feeds["M"] = mask
        y = engine.run_torch(feeds)["Y"].float().cpu()
        ref = multimax_reference(x.double(), torch.tensor(RANGES, dtype=torch.float64),
                                 torch.tensor(TS, dtype=torch.float64), axis, mask)
        tol = 1e-5 if precision == "fp32" else 2e-3
        assert (y.double() - ref).abs().max().item() <= tol


@pytest.fixture(scope="module")
def digits_engines(trt, tmp_path_factory):
    from exporters.tensorrt.export import TensorRTExportOptions, export_tensorrt

    if not (DIGITS / "model.safetensors").is_file():
        pytest.skip("bundled model models/digits-vit is not trained yet")
    out = tmp_path_factory.mktemp("trt") / "digits-vit"
    export_tensorrt(DIGITS, out, TensorRTExportOptions(precisions=("fp32", "fp16")))
    return out


@pytest.mark.tensorrt
@pytest.mark.slow
def test_digits_export_directory(digits_engines, trt):
    from exporters.tensorrt.export import read_tensorrt_manifest

    manifest = read_tensorrt_manifest(digits_engines)  # every engine's sha256 verified
    assert manifest["tensorrt_version"] == trt.__version__
    assert manifest["gpu"]["name"] == torch.cuda.get_device_name()
    assert manifest["precisions"] == ["fp32", "fp16"]
    for graph in ("model.onnx", "explain.onnx"):
        entry = manifest["graphs"][graph]
        assert entry["profile"]["pixel_values"]["max"][0] == 32
        for precision in ("fp32", "fp16"):
            assert (digits_engines / entry["engines"][precision]["file"]).is_file()
            assert entry["engines"][precision]["plugin_layers"] == len(entry["multimax_nodes"]) == 5
    for side in ("config.json", "labels.txt", "onnx/model.onnx"):
        assert (digits_engines / side).is_file()


@pytest.mark.tensorrt
@pytest.mark.slow
def test_digits_parity_fp32_and_fp16(digits_engines, monkeypatch):
    """`mmserve parity` torch vs TensorRT fp32 (atol 1e-4, rtol 1e-3) and fp16 (atol 1e-2, rtol 1e-2),
    held-out and random inputs at batch 1, 4, 16; held-out top-1 must agree."""
    from exporters.parity import run_parity
    from exporters.tensorrt.parity import DIR_ENV

    monkeypatch.setenv(DIR_ENV, str(digits_engines))
    report = run_parity(DIGITS, ["torch", "tensorrt", "tensorrt-fp16"], batch_sizes=(1, 4, 16), samples=64)
    assert not report.skipped, report.skipped
    assert report.passed, json.dumps(report.to_json(), indent=1)[:4000]


@pytest.mark.tensorrt
@pytest.mark.slow
def test_aot_engine_runs_without_the_python_plugin(digits_engines):
    """An AOT engine carries the compiled kernel: a process that never imports mmserve's plugin
    module deserialises and runs it."""
    script = r"""
import sys, tensorrt as trt, torch
engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(open(sys.argv[1], "rb").read())
assert engine is not None
ctx = engine.create_execution_context()
x = torch.randn(2, 1, 8, 8, device="cuda")
ctx.set_input_shape("pixel_values", tuple(x.shape))
ctx.set_tensor_address("pixel_values", x.data_ptr())
outs = {}
for name in ("probs", "logits"):
    outs[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), device="cuda")
    ctx.set_tensor_address(name, outs[name].data_ptr())
stream = torch.cuda.current_stream()
assert ctx.execute_async_v3(stream.cuda_stream)
stream.synchronize()
assert "plugins.tensorrt" not in sys.modules
print(float(outs["probs"].sum(-1).sub(1).abs().max()))
"""
    proc = subprocess.run([sys.executable, "-c", script, str(digits_engines / "model.fp32.engine")],
                          capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-5


@pytest.mark.tensorrt
@pytest.mark.slow
def test_translator_parity_fp32_and_fp16(trt, tmp_path, monkeypatch):
    """The bundled translator: encoder, cross_kv and decoder engines; greedy/beam outputs and step
    logits vs torch through `mmserve parity` with the float32 / float16 tolerance rows."""
    from exporters.parity import run_parity
    from exporters.tensorrt.export import TensorRTExportOptions, export_tensorrt
    from exporters.tensorrt.parity import DIR_ENV

    model_dir = REPO / "models" / "numbers-en-de"
    if not (model_dir / "model.safetensors").is_file():
        pytest.skip("bundled model models/numbers-en-de is not trained yet")
    out = tmp_path / "numbers-en-de"
    export_tensorrt(model_dir, out, TensorRTExportOptions(precisions=("fp32", "fp16")))
    monkeypatch.setenv(DIR_ENV, str(out))
    report = run_parity(model_dir, ["torch", "tensorrt", "tensorrt-fp16"], batch_sizes=(1, 4, 16), samples=32)
    assert not report.skipped, report.skipped
    assert report.passed, json.dumps(report.to_json(), indent=1)[:4000]


@pytest.mark.tensorrt
@pytest.mark.slow
def test_server_backend_classifies(digits_engines):
    from server.backends import LoadOptions, load_backend

    backend = load_backend("tensorrt", digits_engines, "image-classification", LoadOptions(device="cuda"))
    backend.warmup()
    out = backend.run(np.zeros((3, 1, 8, 8), np.float32), explain=True)
    assert out.probs.shape == (3, 10) and np.allclose(out.probs.sum(-1), 1, atol=1e-5)
    assert len(out.attentions) == 4 and out.attentions[0].shape[:2] == (3, 4)
    assert backend.info.backend == "tensorrt" and backend.info.extra["precision"] == "fp32"


@pytest.mark.slow
def test_prepared_decoder_graph_matches_torch_with_masks_and_kv_cache():
    """A (tiny, random) translator decoder: its MultiMax nodes carry padding/causal masks, so they map
    onto the masked plugin; the rewritten graph must still compute decode_step, with an empty and a
    non-empty KV cache, and the optimisation profile must cover every decoder input."""
    import onnxruntime as ort

    from exporters.onnx.configs import Seq2SeqDecoderOnnxConfig
    from exporters.onnx.convert import convert_module, to_proto
    from exporters.tensorrt.export import default_dim_ranges
    from mmserve.models.seq2seq import MultiMaxTranslator, TranslatorConfig

    arch = TranslatorConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, num_heads=2, encoder_layers=1,
                            decoder_layers=2, ffn_dim=32, max_positions=32)
    torch.manual_seed(0)
    model = MultiMaxTranslator(arch).eval()
    config = Seq2SeqDecoderOnnxConfig(model, arch)
    args = config.generate_dummy_inputs(config.export_shapes, torch.Generator().manual_seed(0))
    proto = to_proto(convert_module(config.graph_module(), args, config.spec(), function_body=False))
    prepared = prepare_for_tensorrt(proto)
    assert prepared.nodes and all(n.plugin == MASKED_PLUGIN_NAME for n in prepared.nodes)

    class _Config:  # what default_dim_ranges reads of a ModelDirConfig
        task = "translation"

        @staticmethod
        def model_architecture():
            return arch

    profiles = {p.name: p for p in input_profiles(prepared.model, default_dim_ranges(_Config()))}
    assert profiles["self_pad_mask"].max == (128, 64)  # past + tokens at their maxima
    assert profiles["past_key_0"].min == (1, 2, 0, 8)  # the first step's empty cache is inside the profile

    session = ort.InferenceSession(_plugin_graph_for_onnxruntime(prepared.model).SerializeToString())
    for shapes in config.validation_shapes:  # past 0 (first step) and past > 0
        inputs = config.generate_dummy_inputs(shapes, torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = config.graph_module()(*inputs)
        feeds = {name: t.numpy() for name, t in zip(config.spec().input_names, inputs)}
        got = session.run(config.spec().output_names, feeds)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w.numpy(), atol=2e-5, rtol=1e-4)
