"""Lazy registration of the accelerated MultiMax paths that live outside `mmserve.ops`' reference code.

Importing this module imports neither Triton nor flex_attention: it only registers loaders.
- CUDA row kernel: `plugins.triton.ops` (Triton), loaded the first time a CUDA tensor reaches
  `mmserve::multimax`. Without Triton (or without the `plugins` package) the loader raises, the
  registry remembers why (`mmserve kernels info`) and the reference path runs.
- CUDA attention: flex_attention with the modulator as score_mod (compiled), picked by
  `multimax_attention(impl="auto")`.
- CPU attention: the same flex path, registered under the name "flex" but never picked by "auto"
  (on CPU the eager path with the fused C++ row kernel is faster; flex has no CPU backward).
"""

from __future__ import annotations

from typing import Optional

import torch

from .attention import register_attention_impl
from .kernels import MultiMaxKernel, register_kernel_provider

__all__ = ["flex_attention_impl"]


def _load_triton_kernel() -> MultiMaxKernel:
    from plugins.triton.ops import make_kernel  # imports triton; ImportError -> reference path

    return make_kernel()


def flex_attention_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ranges: torch.Tensor,
    ts: torch.Tensor,
    mask: Optional[torch.Tensor],
    is_causal: bool,
    scale: Optional[float],
) -> torch.Tensor:
    """The registered attention impl (AttentionImpl signature): compiled flex MultiMax attention."""
    from .flex import multimax_flex_attention

    return multimax_flex_attention(q, k, v, ranges, ts, mask=mask, is_causal=is_causal, scale=scale)


def _flex_supports_cuda(q: torch.Tensor) -> bool:
    from .flex import flex_available

    return q.dim() == 4 and q.shape[-1] >= 16 and q.dtype in (torch.float16, torch.bfloat16, torch.float32) and flex_available()


register_kernel_provider("cuda", "triton", _load_triton_kernel)
register_attention_impl("cuda", "flex", flex_attention_impl, supports=_flex_supports_cuda)
register_attention_impl("cpu", "flex", flex_attention_impl, supports=lambda q: False)
