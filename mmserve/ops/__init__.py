"""The MultiMax op: softmax(seglu(x)) (Zhou, Fritz & Keuper, ICML 2024).

Public API: `seglu`, `multimax`, the `MultiMax` module, `multimax_parameters`, the plain reference
functions used by tests, and `multimax_attention` (attention with MultiMax as its normaliser).
"""

from .attention import multimax_attention, softmax_attention
from .functional import multimax, seglu
from .kernels import available_kernels, register_kernel_provider
from .module import OFFICIAL_INIT_STD, OFFICIAL_ORDER, MultiMax, multimax_parameters
from .reference import multimax_reference, seglu_reference
from . import accelerated, cpu_kernel  # noqa: F401,E402  (register fused kernels; nothing is built or imported yet)

__all__ = [
    "seglu",
    "multimax",
    "MultiMax",
    "multimax_parameters",
    "multimax_attention",
    "softmax_attention",
    "seglu_reference",
    "multimax_reference",
    "available_kernels",
    "register_kernel_provider",
    "OFFICIAL_ORDER",
    "OFFICIAL_INIT_STD",
]
