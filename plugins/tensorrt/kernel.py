"""The project's Triton row kernel (`plugins.triton.kernels.multimax_fwd_kernel`) in TensorRT's AOT
calling convention, and the launch plan TensorRT uses for it.

TensorRT launches an AOT plugin kernel with (input pointers..., extra int32 scalars..., output
pointers...) and nothing else (tensorrt.plugin.aot_impl). The row kernel takes (x, y, params, mask,
n_rows, n_cols, mask geometry...), so two thin entry points reorder the arguments and call it (Triton
inlines a `@triton.jit` function called from another one):

    multimax_rows        (x_ptr,           params_ptr, n_rows, n_cols, y_ptr)
    multimax_rows_masked (x_ptr, mask_ptr, params_ptr, n_rows, n_cols, y_ptr)

`params` is the plugin's last input: float32 [4N] = ranges (2N) then ts (2N), the layout the row kernel
reads (the exporter adds it as an initializer). The mask arrives expanded to X's shape and contiguous,
so its geometry is X's: offset of row r = r * n_cols, column stride 1.

The tile plan is `plugins.triton.launch.row_launch`, the same function the PyTorch path uses, asked
with the largest row count and row length the engine's optimisation profile allows (`plan_kernel`):
the tile shape is a compile-time constant of the PTX, and a tile sized for the longest rows is
correct for every shorter one (rows past n_rows / columns past n_cols are masked off in the kernel).
`launch_jit` runs exactly this entry point, plan and grid through Triton's own launcher: that is the
`tensorrt.plugin.impl` fallback, and what the tests run under TRITON_INTERPRET=1 on CPU tensors.
"""

from __future__ import annotations

from typing import Any, Optional

import triton
import triton.language as tl

from plugins.triton.kernels import multimax_fwd_kernel
from plugins.triton.launch import FORWARD_MAX_SINGLE_BLOCK, RowLaunch, row_launch

from .attrs import MultiMaxAttributeError
from .dtypes import element_type
from .geometry import cdiv, row_count_expr
from .kernel_params import pack_params

__all__ = [
    "KernelPlan",
    "plan_kernel",
    "kernel_signature",
    "kernel_constexprs",
    "grid",
    "pack_params",
    "launch_jit",
    "compile_for_tensorrt",
    "multimax_rows",
    "multimax_rows_masked",
]

KernelPlan = RowLaunch


def plan_kernel(max_row_length: int, max_rows: int = 1 << 30,
                max_single_block: int = FORWARD_MAX_SINGLE_BLOCK) -> KernelPlan:
    """The row kernel's tile plan for rows of up to `max_row_length` elements (and up to `max_rows`
    rows); `grid` is recomputed per launch from the actual row count. Rows longer than
    `max_single_block` use the kernel's looping (online softmax) regime."""
    if max_row_length < 1:
        raise MultiMaxAttributeError("MultiMax", f"row length must be positive, got {max_row_length}")
    return row_launch(max(1, int(max_rows)), int(max_row_length), max_single_block)


def grid(n_rows: Any, plan: KernelPlan) -> Any:
    """Programs along x for `n_rows` rows (ints; the AOT path builds the same with trtp.cdiv)."""
    return max(1, cdiv(n_rows, plan.rows_per_program))


def kernel_constexprs(order: int, plan: KernelPlan) -> dict[str, Any]:
    return {"ORDER": int(order), "BLOCK_N": plan.block_n, "ROWS": plan.rows_per_program,
            "SINGLE_BLOCK": plan.single_block}


def kernel_signature(io_type: str, masked: bool) -> dict[str, str]:
    """triton.compiler.ASTSource signature of the entry point, in parameter order."""
    pointer = element_type(io_type).triton_pointer
    sig = {"x_ptr": pointer}
    if masked:
        sig["mask_ptr"] = element_type("BOOL").triton_pointer
    sig.update({"params_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "y_ptr": pointer})
    sig.update({"ORDER": "constexpr", "BLOCK_N": "constexpr", "ROWS": "constexpr", "SINGLE_BLOCK": "constexpr"})
    return sig


@triton.jit
def multimax_rows(x_ptr, params_ptr, n_rows, n_cols, y_ptr,
                  ORDER: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr, SINGLE_BLOCK: tl.constexpr):
    """Entry point of mmserve::MultiMax: (X, params) -> Y."""
    multimax_fwd_kernel(x_ptr, y_ptr, params_ptr, x_ptr, n_rows, n_cols, 1, 1, 0, 0, 0, 0,
                        ORDER, 0, BLOCK_N, ROWS, SINGLE_BLOCK)


@triton.jit
def multimax_rows_masked(x_ptr, mask_ptr, params_ptr, n_rows, n_cols, y_ptr,
                         ORDER: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
                         SINGLE_BLOCK: tl.constexpr):
    """Entry point of mmserve::MultiMaxMasked: (X, mask [X's shape, contiguous bool], params) -> Y."""
    multimax_fwd_kernel(x_ptr, y_ptr, params_ptr, mask_ptr, n_rows, n_cols, 1, 1, n_cols, 0, 0, 1,
                        ORDER, 1, BLOCK_N, ROWS, SINGLE_BLOCK)


def launch_jit(x: Any, mask: Optional[Any], params: Any, y: Any, order: int,
               plan: Optional[KernelPlan] = None) -> None:
    """Launch an entry point with Triton's own launcher on torch tensors, with the plan and grid the
    AOT launch uses (by default the plan for this very shape)."""
    if x.dim() < 1 or not x.is_contiguous() or not y.is_contiguous():
        raise ValueError("launch_jit needs contiguous tensors of rank >= 1 with the normalised axis last")
    if mask is not None and (tuple(mask.shape) != tuple(x.shape) or not mask.is_contiguous()):
        raise ValueError(f"mask must be contiguous with X's shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    if params.numel() < max(1, 4 * order):
        raise ValueError(f"params must hold 4N = {4 * order} floats (ranges then ts), got {params.numel()}")
    n_rows = int(row_count_expr(list(x.shape)))
    n_cols = int(x.shape[-1])
    if n_rows == 0 or n_cols == 0:
        return
    plan = plan or plan_kernel(n_cols, n_rows)
    programs = (grid(n_rows, plan),)
    consts = kernel_constexprs(order, plan)
    if mask is None:
        multimax_rows[programs](x, params, n_rows, n_cols, y, num_warps=plan.num_warps, **consts)
    else:
        multimax_rows_masked[programs](x, mask, params, n_rows, n_cols, y, num_warps=plan.num_warps, **consts)


def compile_for_tensorrt(io_type: str, masked: bool, plan: KernelPlan, order: int,
                         target: Optional[tuple[str, int, int]] = None):
    """PTX of the entry point for TensorRT (see plugins.tensorrt.ptx)."""
    from .ptx import compile_ptx

    fn = multimax_rows_masked if masked else multimax_rows
    return compile_ptx(
        fn,
        kernel_signature(io_type, masked),
        kernel_constexprs(order, plan),
        num_warps=plan.num_warps,
        target=target,
    )
