"""MultiMax as an nn.Module holding its 2N + 2N learnable scalars."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .functional import multimax

__all__ = ["MultiMax", "multimax_parameters", "OFFICIAL_ORDER", "OFFICIAL_INIT_STD"]

OFFICIAL_ORDER = 2
OFFICIAL_INIT_STD = 0.02


def multimax_parameters(order: int = OFFICIAL_ORDER) -> tuple[nn.Parameter, nn.Parameter]:
    """Fresh (ranges, ts), each 2N scalars, initialised like the official code (trunc normal, std .02).

    Modules that mirror the official state-dict layout (`blocks.i.attn.ranges`, top-level `ranges`)
    own these directly instead of holding a `MultiMax` child.
    """
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    ranges = nn.Parameter(torch.zeros(2 * order))
    ts = nn.Parameter(torch.zeros(2 * order))
    nn.init.trunc_normal_(ranges, std=OFFICIAL_INIT_STD)
    nn.init.trunc_normal_(ts, std=OFFICIAL_INIT_STD)
    return ranges, ts


class MultiMax(nn.Module):
    """softmax(seglu(x)) with learnable modulator parameters `ranges` and `ts` (2N scalars each)."""

    def __init__(self, order: int = OFFICIAL_ORDER, dim: int = -1) -> None:
        super().__init__()
        self.order = order
        self.dim = dim
        self.ranges, self.ts = multimax_parameters(order)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return multimax(x, self.ranges, self.ts, dim=self.dim, mask=mask)

    def extra_repr(self) -> str:
        return f"order={self.order}, dim={self.dim}"
