"""The fused MultiMax CPU kernels (C++, built on first use) and their registration with `mmserve.ops`.

Two things are registered when this package is imported (nothing is compiled yet):
- the row kernel, provider "cpp" for CPU tensors of `mmserve::multimax` (forward and backward);
- fused attention, attention impl "fused" for CPU, which `multimax_attention(impl="auto")` picks for
  float32 [B, H, T, D] inference: scores stay in cache, never written as a [B, H, Tq, Tk] tensor.
  It steps aside (eager path: matmul + `mmserve::multimax` + matmul) whenever gradients are needed,
  while torch.compile/torch.export/jit tracing runs (graphs keep the one mmserve::multimax node the
  ONNX exporter maps), for other dtypes, or when the kernel cannot be built.

The compile happens the first time a CPU tensor reaches one of them (or eagerly with
`mmserve kernels build`). When the build fails (no compiler, no ninja) the kernel registry remembers
the error and everything falls back to the plain-PyTorch reference.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..attention import multimax_attention, register_attention_impl
from ..kernels import MultiMaxKernel, fused_kernels_enabled, register_kernel_provider
from ..reference import multimax_reference
from .build import BuildInfo, build, cache_root

__all__ = [
    "load_kernel",
    "fused_attention",
    "fused_attention_available",
    "build",
    "cache_root",
    "BuildInfo",
    "SUPPORTED_DTYPES",
    "MAX_ORDER",
]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MAX_ORDER = 16  # kMaxOrder in multimax_cpu.cpp


def _supports(x: torch.Tensor, mask: Optional[torch.Tensor]) -> bool:
    if x.dtype not in SUPPORTED_DTYPES or x.device.type != "cpu":
        return False
    return mask is None or mask.dtype == torch.bool or mask.is_floating_point()


def load_kernel() -> MultiMaxKernel:
    """Build (or reuse) the extension and wrap its two ops in the registry's kernel contract."""
    build()
    ops = torch.ops.mmserve_cpu

    def forward(x, ranges, ts, mask):
        if ranges.numel() > 2 * MAX_ORDER:
            return multimax_reference(x, ranges, ts, -1, mask)
        return ops.multimax_forward(x, ranges, ts, mask)

    def backward(grad_y, y, x, ranges, ts):
        if ranges.numel() > 2 * MAX_ORDER:
            from ..backward import multimax_backward_reference

            return multimax_backward_reference(grad_y, y, x, ranges, ts, -1)
        return ops.multimax_backward(grad_y.to(x.dtype), y.to(x.dtype), x, ranges, ts)

    return MultiMaxKernel(name="cpp", forward=forward, backward=backward, supports=_supports)


_attention_state: dict[str, object] = {}


def fused_attention_available() -> bool:
    """Whether the fused attention kernel loads here (built, and torch exports a BLAS sgemm)."""
    if "ok" not in _attention_state:
        try:
            build()
            _attention_state["ok"] = bool(torch.ops.mmserve_cpu.has_blas())
            if not _attention_state["ok"]:
                _attention_state["error"] = "this torch build exports no BLAS sgemm"
        except Exception as exc:  # no compiler: eager path
            _attention_state["ok"] = False
            _attention_state["error"] = f"{type(exc).__name__}: {exc}"
    return bool(_attention_state["ok"])


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def _fused_applies(q, k, v, ranges, ts, mask) -> bool:
    if _tracing() or not fused_kernels_enabled():
        return False
    tensors = (q, k, v, ranges, ts)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # training: the eager path has the fused backward of the row op
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (q, k, v)):
        return False
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        return False  # broadcast batch/heads (e.g. grouped KV): eager path
    if ranges.numel() > 2 * MAX_ORDER:
        return False
    if mask is not None and not (mask.dtype == torch.bool or mask.is_floating_point()):
        return False
    return fused_attention_available()


def fused_attention(q, k, v, ranges, ts, mask=None, is_causal=False, scale=None):
    """MultiMax attention for CPU inference without a score tensor (AttentionImpl signature).

    Falls back to the eager path where the fused kernel does not apply (see the module docstring).
    """
    if not _fused_applies(q, k, v, ranges, ts, mask):
        return multimax_attention(q, k, v, ranges, ts, mask=mask, is_causal=is_causal, scale=scale, impl="eager")
    B, H, Tq, D = q.shape
    Tk = k.shape[-2]
    if mask is not None:
        if torch.broadcast_shapes(mask.shape, (B, H, Tq, Tk)) != (B, H, Tq, Tk):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to {(B, H, Tq, Tk)}")
        mask = mask.expand(B, H, Tq, Tk)  # a view: zero strides, never materialised
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)
    return torch.ops.mmserve_cpu.attention_forward(q, k, v, ranges, ts, mask, bool(is_causal), scale)


register_kernel_provider("cpu", "cpp", load_kernel)
register_attention_impl(
    "cpu", "fused", fused_attention, supports=lambda q: q.dtype == torch.float32 and q.dim() == 4
)
