"""The /classify HTTP contract (every test of tests/test_server_classify.py) against `mmserve serve
--ray` with 2 replicas per model, on the session's private Ray cluster; and that Ray, its replicas and
the proxy listen on and talk to loopback addresses only.

Not shared: test_hundreds_of_concurrent_requests_are_batched reads the batch-size histogram from
/metrics, which on Ray lives in the model replicas, not in the ingress that answers /metrics.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'); dev installs it")

from ray_support import RayServerProcess, listening_addresses, non_loopback, ray_processes, remote_peers  # noqa: E402
from test_server_classify import *  # noqa: E402,F401,F403  (the shared suite: its fixtures and tests)
from test_server_classify import SERVER_ARGS, SERVER_ENV  # noqa: E402

del test_hundreds_of_concurrent_requests_are_batched  # noqa: F821  (see the module docstring)


@pytest.fixture(scope="module")
def server(ray_cluster):
    srv = RayServerProcess(SERVER_ARGS, env=SERVER_ENV, address=ray_cluster.address, replicas=2)
    yield srv
    assert srv.stop(), srv.output()


@pytest.fixture(scope="module")
def request_id_pattern() -> str:
    """Ray's HTTP proxy assigns the id of a request that came without one: a UUID4 string."""
    return r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_ray_replicas_and_sockets_stay_on_loopback(server, client) -> None:
    """2 model replicas + ingress + proxy are up, and every socket of the cluster's processes
    listens on (and connects to) a loopback address."""
    assert client.get("/readyz").status_code == 200
    procs = ray_processes()
    names = " ".join(p.name() for p in procs)
    assert names.count("ServeReplica:mmserve:digits-vit") == 2, names
    assert "ServeReplica:mmserve:mmserve" in names and "ProxyActor" in names, names
    listening = listening_addresses(procs)
    assert len(listening) >= 8, listening  # gcs, raylet, agents, proxy, replicas: the check saw them
    assert any(port == server.port for _, port, _ in listening)  # the proxy serves the API port
    assert non_loopback(listening) == []
    assert non_loopback(remote_peers(procs)) == []
