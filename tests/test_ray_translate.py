"""The /translate HTTP contract (every test of tests/test_server_translate.py) against `mmserve
serve --ray` with 2 replicas, on the session's private Ray cluster.

Not shared: test_concurrent_requests_continuous_batching reads the decoder's step metrics from
/metrics, which on Ray live in the model replicas, not in the ingress that answers /metrics.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'); dev installs it")

from ray_support import RayServerProcess  # noqa: E402
from test_server_translate import *  # noqa: E402,F401,F403  (the shared suite: its fixtures and tests)
from test_server_translate import SERVER_ENV, server_args  # noqa: E402

del test_concurrent_requests_continuous_batching  # noqa: F821  (see the module docstring)


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_translator):
    srv = RayServerProcess(server_args(tiny_translator), env=SERVER_ENV, address=ray_cluster.address, replicas=2)
    yield srv
    assert srv.stop(), srv.output()
