"""The plugin's `params` input, without importing Triton: the exporter packs it, the kernel reads it.

Layout (the one `plugins.triton.kernels.multimax_fwd_kernel` reads through its `p_ptr`): float32
[4N] = ranges (2N values) then ts (2N values). Order 0 gets one unused value, because the kernel still
needs a valid pointer.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["PARAMS_SUFFIX", "pack_params"]

PARAMS_SUFFIX = "multimax_params"
"""Initializers are named `<node name>/multimax_params` (so the fp16 conversion can find them)."""


def pack_params(ranges: Iterable[Any], ts: Iterable[Any]) -> list[float]:
    values = [float(v) for v in list(ranges) + list(ts)]
    return values or [0.0]

