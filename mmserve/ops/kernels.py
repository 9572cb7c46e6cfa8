"""Registry of fused MultiMax kernels, one list per device type.

`mmserve.ops` itself only ships the plain-PyTorch reference. Fused kernels (the C++ CPU kernel, the
Triton GPU kernel in `plugins/`) register here, lazily: a provider is only asked to load (and, for
the C++ kernel, compile) the first time a tensor of its device type reaches the op. A provider that
cannot load (no compiler, no Triton) is remembered as unavailable and the reference path runs.

Kernel contract (what the custom op hands a kernel):
- `forward(x, ranges, ts, mask) -> y`: `x` is contiguous with the normalised axis last; `mask` is
  None, or a bool (True = masked) or floating (additive) tensor *expanded* to x's shape (it may have
  zero strides: kernels must honour strides, not materialise the broadcast). Returns y in x's dtype.
- `backward(grad_y, y, x, ranges, ts) -> (dx, d_ranges, d_ts)` with the same layout rules.
- `supports(x, mask) -> bool`: whether this kernel handles these dtypes and layouts.

Set `MMSERVE_KERNELS=reference` to turn all fused kernels off (debugging, benchmarks).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = [
    "MultiMaxKernel",
    "register_kernel_provider",
    "select_kernel",
    "available_kernels",
    "fused_kernels_enabled",
]

log = logging.getLogger(__name__)

ForwardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
BackwardFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    "tuple[torch.Tensor, torch.Tensor, torch.Tensor]",
]
SupportsFn = Callable[[torch.Tensor, Optional[torch.Tensor]], bool]


@dataclass(frozen=True)
class MultiMaxKernel:
    """A fused implementation of the MultiMax forward (and optionally backward) for one device type."""

    name: str
    forward: ForwardFn
    backward: Optional[BackwardFn]
    supports: SupportsFn


@dataclass
class _Provider:
    name: str
    load: Callable[[], Optional[MultiMaxKernel]]
    kernel: Optional[MultiMaxKernel] = None
    attempted: bool = False
    error: Optional[str] = None


_providers: dict[str, list[_Provider]] = {}
_lock = threading.Lock()


def fused_kernels_enabled() -> bool:
    """False when the environment asks for the reference path only."""
    return os.environ.get("MMSERVE_KERNELS", "auto").lower() not in {"reference", "off", "0", "none"}


def register_kernel_provider(
    device_type: str, name: str, load: Callable[[], Optional[MultiMaxKernel]]
) -> None:
    """Register a lazily loaded kernel for `device_type` ("cpu", "cuda"); earlier registrations win."""
    with _lock:
        providers = _providers.setdefault(device_type, [])
        if any(p.name == name for p in providers):
            return
        providers.append(_Provider(name=name, load=load))


def _ensure_loaded(provider: _Provider) -> Optional[MultiMaxKernel]:
    if provider.attempted:
        return provider.kernel
    with _lock:
        if not provider.attempted:
            try:
                provider.kernel = provider.load()
                if provider.kernel is None:
                    provider.error = "provider reported it is not available here"
            except Exception as exc:  # a kernel that cannot build must never break the op
                provider.error = f"{type(exc).__name__}: {exc}"
                log.warning("MultiMax kernel %r unavailable, using the reference path: %s", provider.name, exc)
            provider.attempted = True
    return provider.kernel


def select_kernel(x: torch.Tensor, mask: Optional[torch.Tensor]) -> Optional[MultiMaxKernel]:
    """The first registered kernel for x's device that loads and supports this input, else None."""
    if not fused_kernels_enabled():
        return None
    for provider in _providers.get(x.device.type, []):
        kernel = _ensure_loaded(provider)
        if kernel is not None and kernel.supports(x, mask):
            return kernel
    return None


def available_kernels(load: bool = False) -> dict[str, list[dict[str, object]]]:
    """Describe the registered kernels per device type (for `mmserve kernels` and /v1/models)."""
    report: dict[str, list[dict[str, object]]] = {}
    for device_type, providers in _providers.items():
        rows = []
        for provider in providers:
            if load:
                _ensure_loaded(provider)
            rows.append(
                {
                    "name": provider.name,
                    "loaded": provider.kernel is not None,
                    "attempted": provider.attempted,
                    "error": provider.error,
                }
            )
        report[device_type] = rows
    return report
