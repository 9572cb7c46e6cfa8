"""Serving backends: one small interface (`base.py`), a registry, and the torch / onnxruntime runtimes."""

from .base import Backend, BackendInfo, ClassifierBackend, ClassifierOutput, LoadOptions, TranslatorBackend
from .registry import available_backends, load_backend, register_backend, unregister_backend

__all__ = [
    "Backend",
    "BackendInfo",
    "ClassifierBackend",
    "ClassifierOutput",
    "LoadOptions",
    "TranslatorBackend",
    "available_backends",
    "load_backend",
    "register_backend",
    "unregister_backend",
]
