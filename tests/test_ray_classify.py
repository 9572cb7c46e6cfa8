"""The /classify HTTP contract (every test of tests/test_server_classify.py) against `mmserve serve
--ray` with 2 replicas per model, on the session's private Ray cluster; that Ray, its replicas and
the proxy listen on and talk to loopback addresses only; and, last, a replica killed under load.

Not shared: test_hundreds_of_concurrent_requests_are_batched reads the batch-size histogram from
/metrics, which on Ray lives in the model replicas, not in the ingress that answers /metrics.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'); dev installs it")

import asyncio  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from conftest import wait_ready  # noqa: E402
from ray_support import (  # noqa: E402
    RayServerProcess,
    labels,
    listening_addresses,
    non_loopback,
    ray_processes,
    remote_peers,
    replica_pids,
)
from test_server_split import LOAD_S, _digits, _load  # noqa: E402
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


@pytest.mark.slow
def test_replica_killed_under_load_is_replaced(server) -> None:
    """Runs last: one of the 2 digits-vit replicas is SIGKILLed while 16 clients send requests."""
    images, _ = _digits()
    want = labels(server.url, images)
    before = replica_pids("digits-vit")
    assert len(before) == 2, before
    t0 = time.monotonic()
    outcomes = asyncio.run(_load(server.url, images, lambda: os.kill(before[0], signal.SIGKILL), concurrency=16))
    elapsed = time.monotonic() - t0
    statuses = [o[0] for o in outcomes]
    assert "error" not in statuses, [o for o in outcomes if o[0] == "error"][:3]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 50
    refused = [o for o in outcomes if o[0] == 503]
    assert len(refused) <= 16, "at most the requests in flight on the killed replica fail"
    assert {o[1] for o in refused} <= {"engine_restarting"}, refused[:3]
    assert all(o[4] for o in refused), "every 503 carries Retry-After"
    wrong = [o for o in outcomes if o[0] == 200 and o[3] != want[o[2]]]
    assert not wrong, wrong[:3]
    assert elapsed < LOAD_S + 31, "no request may hang"
    print(f"\nreplica killed under load: {statuses.count(200)} answered 200 (all correct), "
          f"{len(refused)} answered 503, 0 unanswered")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # Ray's controller notices the death and starts a new replica
        now = replica_pids("digits-vit")
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.5)
    assert len(now) == 2 and before[0] not in now, (before, now)
    wait_ready(server.url, 60, server.proc)
    assert labels(server.url, images) == want
