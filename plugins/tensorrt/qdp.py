"""The MultiMax TensorRT plugins, as `tensorrt.plugin` ("quickly deployable plugin") definitions.

API (TensorRT >= 10.7 for AOT; https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/pluginGuide.html):
- `@trtp.register("ns::name")`: inputs annotated `trtp.TensorDesc`, then attributes (`int`,
  `numpy.typing.NDArray[np.float32]`); returns the output descriptor (trt_plugin_register.html);
- `@trtp.autotune`: the supported type/format combinations, in the `AutoTuneCombination` grammar
  ("FP32|FP16, FP32|FP16" = input and output both FP32 or both FP16) (trt_plugin_autotune/index.html);
- `@trtp.aot_impl`: returns (kernel name, PTX, `KernelLaunchParams`, `SymIntExprs` of int32 kernel
  arguments placed after the input pointers and before the output pointers); TensorRT embeds the
  PTX in the engine, which then runs without Python (trt_plugin_aot_impl/index.html,
  trt_plugin_aot_impl/KernelLaunchParams.html). It receives *every* registered attribute, in
  registration order, plus `outputs` and `tactic`;
- `@trtp.impl`: the Python (JIT) fallback, called at run time with `trtp.Tensor`s (which expose
  `__cuda_array_interface__`) and the CUDA stream (trt_plugin_impl.html).

Inputs: X, [mask expanded to X's shape], params (float32 [4N]: ranges then ts, an initializer the
exporter adds: the row kernel reads its constants through a pointer). The `ranges`/`ts` attributes
are still declared, to validate the node at build time and to check `params` against them.

The AOT kernel's tile shape is a compile-time constant, so `aot_impl` plans it for the largest rows
the optimisation profile allows (`TensorDesc.shape`: static sizes, or `.max` of dynamic ones); the
grid is symbolic (`cdiv(rows, ROWS)`) and evaluated by TensorRT for each inference's shape.

No `from __future__ import annotations` here: `tensorrt.plugin` inspects the annotations as classes.
"""

import functools
import logging
from typing import List, Tuple, Union

import numpy as np
import numpy.typing as npt
import tensorrt as trt
import tensorrt.plugin as trtp

from . import MASKED_PLUGIN_NAME, PLUGIN_NAME, PLUGIN_NAMESPACE
from .attrs import MultiMaxAttributeError, MultiMaxAttrs, from_plugin_fields, is_last_axis
from .dtypes import KERNEL_IO_TYPES, MASK_TYPE, PARAMS_TYPE, element_type
from .geometry import row_count_expr, static_row_count_bound, static_row_length_bound
from .kernel import KernelPlan, compile_for_tensorrt, launch_jit, pack_params, plan_kernel
from .ptx import target_from_env

__all__ = ["register", "PLUGIN_IDS"]

log = logging.getLogger(__name__)

PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
MASKED_PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{MASKED_PLUGIN_NAME}"
PLUGIN_IDS = (PLUGIN_ID, MASKED_PLUGIN_ID)

_IO = "|".join(element_type(t).autotune for t in KERNEL_IO_TYPES)  # "FP32|FP16"
_PARAMS = element_type(PARAMS_TYPE).autotune  # "FP32": the constants stay float32 in fp16 engines
_MASK = element_type(MASK_TYPE).autotune  # "BOOL"
Floats = npt.NDArray[np.float32]


def _checked(x: trtp.TensorDesc, axis: int, ranges: Floats, ts: Floats, where: str) -> MultiMaxAttrs:
    """Attribute + layout validation shared by both plugins; raising here fails the engine build
    with this message in TensorRT's log."""
    attrs = from_plugin_fields(axis, ranges, ts, where=where)
    if not is_last_axis(attrs.axis, x.ndim):
        raise MultiMaxAttributeError(
            where,
            f"axis={attrs.axis} of a rank-{x.ndim} input is not the last axis; the fused kernel normalises rows "
            "along the innermost dimension. Prepare the graph with exporters.tensorrt.graph.prepare_for_tensorrt, "
            "which moves the axis last with Transpose nodes",
        )
    return attrs


# ------------------------------------------------------------ mmserve::MultiMax (X, params) -> Y

@trtp.register(PLUGIN_ID)
def multimax_desc(x: trtp.TensorDesc, params: trtp.TensorDesc, axis: int, ranges: Floats, ts: Floats) -> trtp.TensorDesc:
    _checked(x, axis, ranges, ts, PLUGIN_ID)
    return x.like()


@trtp.autotune(PLUGIN_ID)
def multimax_autotune(
    x: trtp.TensorDesc, params: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]
) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(f"{_IO}, {_PARAMS}, {_IO}", "LINEAR")]


@trtp.aot_impl(PLUGIN_ID)
def multimax_aot_impl(
    x: trtp.TensorDesc,
    params: trtp.TensorDesc,
    axis: int,
    ranges: Floats,
    ts: Floats,
    outputs: Tuple[trtp.TensorDesc],
    tactic: int,
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
    attrs = _checked(x, axis, ranges, ts, PLUGIN_ID)
    return _aot(x, params, attrs, masked=False)


@trtp.impl(PLUGIN_ID)
def multimax_impl(
    x: trtp.Tensor,
    params: trtp.Tensor,
    axis: int,
    ranges: Floats,
    ts: Floats,
    outputs: Tuple[trtp.Tensor],
    stream: int,
) -> None:
    attrs = from_plugin_fields(axis, ranges, ts, where=PLUGIN_ID)
    _jit(x, None, params, outputs[0], attrs, stream)


# ------------------------------------------------ mmserve::MultiMaxMasked (X, mask, params) -> Y

@trtp.register(MASKED_PLUGIN_ID)
def multimax_masked_desc(
    x: trtp.TensorDesc, mask: trtp.TensorDesc, params: trtp.TensorDesc, axis: int, ranges: Floats, ts: Floats
) -> trtp.TensorDesc:
    _checked(x, axis, ranges, ts, MASKED_PLUGIN_ID)
    if mask.ndim != x.ndim:
        raise MultiMaxAttributeError(
            MASKED_PLUGIN_ID,
            f"mask has rank {mask.ndim}, X rank {x.ndim}: the plugin reads a mask already expanded to X's shape "
            "(exporters.tensorrt.graph inserts the Expand)",
        )
    return x.like()


@trtp.autotune(MASKED_PLUGIN_ID)
def multimax_masked_autotune(
    x: trtp.TensorDesc, mask: trtp.TensorDesc, params: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]
) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(f"{_IO}, {_MASK}, {_PARAMS}, {_IO}", "LINEAR")]


@trtp.aot_impl(MASKED_PLUGIN_ID)
def multimax_masked_aot_impl(
    x: trtp.TensorDesc,
    mask: trtp.TensorDesc,
    params: trtp.TensorDesc,
    axis: int,
    ranges: Floats,
    ts: Floats,
    outputs: Tuple[trtp.TensorDesc],
    tactic: int,
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
    attrs = _checked(x, axis, ranges, ts, MASKED_PLUGIN_ID)
    return _aot(x, params, attrs, masked=True)


@trtp.impl(MASKED_PLUGIN_ID)
def multimax_masked_impl(
    x: trtp.Tensor,
    mask: trtp.Tensor,
    params: trtp.Tensor,
    axis: int,
    ranges: Floats,
    ts: Floats,
    outputs: Tuple[trtp.Tensor],
    stream: int,
) -> None:
    attrs = from_plugin_fields(axis, ranges, ts, where=MASKED_PLUGIN_ID)
    _jit(x, mask, params, outputs[0], attrs, stream)


# ----------------------------------------------------------------------------- shared bodies

@functools.lru_cache(maxsize=256)
def _compiled(io_type: str, masked: bool, plan: KernelPlan, order: int):
    """One PTX per (dtype, mask, tile plan, order); the constants come in through `params`."""
    return compile_for_tensorrt(io_type, masked, plan, order, target=target_from_env())


def _check_params(params_len: int, attrs: MultiMaxAttrs, where: str) -> None:
    want = len(pack_params(attrs.ranges, attrs.ts))
    if params_len != want:
        raise MultiMaxAttributeError(where, f"params input holds {params_len} values, expected {want} (ranges then ts)")


def _aot(x: trtp.TensorDesc, params: trtp.TensorDesc, attrs: MultiMaxAttrs, masked: bool):
    where = MASKED_PLUGIN_ID if masked else PLUGIN_ID
    io_type = element_type(x.dtype).trt_name
    if io_type not in KERNEL_IO_TYPES:
        raise MultiMaxAttributeError(where, f"unsupported input type {io_type} (kernel reads {KERNEL_IO_TYPES})")
    if element_type(params.dtype).trt_name != PARAMS_TYPE:
        raise MultiMaxAttributeError(where, f"params input must be {PARAMS_TYPE}, got {element_type(params.dtype).trt_name}")
    _check_params(int(params.shape[0]), attrs, where)
    # Tile plan for the largest rows the optimisation profile allows (static sizes or profile max).
    plan = plan_kernel(static_row_length_bound(x.shape), static_row_count_bound(x.shape))
    compiled = _compiled(io_type, masked, plan, attrs.order)

    rows = row_count_expr(list(x.shape_expr))  # product of all but the last dimension, symbolic
    if isinstance(rows, int):  # rank-1 input: one row
        rows = trtp.ShapeExpr(rows)
    cols = x.shape_expr[x.ndim - 1]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(rows, plan.rows_per_program) if plan.rows_per_program > 1 else rows
    launch.block_x = compiled.num_warps * 32
    launch.shared_mem = compiled.shared
    # int32 arguments, in the kernel's order after the input pointers: n_rows, n_cols.
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(rows), trtp.SymInt32(cols)])
    log.debug("MultiMax AOT kernel %s: %s, plan %s", compiled.name, io_type, plan)
    return compiled.name, compiled.ptx, launch, extra


def _jit(x: trtp.Tensor, mask, params: trtp.Tensor, y: trtp.Tensor, attrs: MultiMaxAttrs, stream: int) -> None:
    import torch

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        xt = torch.as_tensor(x, device="cuda")
        pt = torch.as_tensor(params, device="cuda")
        yt = torch.as_tensor(y, device="cuda")
        mt = torch.as_tensor(mask, device="cuda") if mask is not None else None
        _check_params(pt.numel(), attrs, MASKED_PLUGIN_ID if mask is not None else PLUGIN_ID)
        launch_jit(xt, mt, pt, yt, attrs.order)


def register() -> None:
    """Nothing to do beyond importing this module: the decorators above registered both plugins with
    TensorRT's plugin registry (and `trtp.op.mmserve.*`) exactly once per process."""
    assert trt.get_plugin_registry() is not None
