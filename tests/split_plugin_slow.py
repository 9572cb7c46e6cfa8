"""A server plugin for tests/test_server_split.py: `--plugin tests.split_plugin_slow` registers the
backend `slow-torch`, the torch classifier with a fixed delay per model run, so a test can hold work in
the engine process (which imports plugins itself) while it cancels, overloads or stops the server."""

from __future__ import annotations

import time

from server.backends import register_backend
from server.backends.torch_backend import load as load_torch

DELAY_S = 0.5


def _load(path, task, options):
    backend = load_torch(path, task, options)
    run = backend.run

    def slow_run(pixel_values, explain=False):
        time.sleep(DELAY_S)
        return run(pixel_values, explain=explain)

    backend.run = slow_run
    backend.warmup = lambda: None  # warm-up is not what these tests measure
    return backend


register_backend("slow-torch", _load, replace=True)
