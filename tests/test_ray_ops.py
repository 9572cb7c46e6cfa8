"""mmserve on Ray Serve, the operations side: a model replica killed under load is replaced by Ray
with every request answered (200 correct, or 503 + Retry-After); the config file `mmserve
ray-config` writes passes Ray's own schema and deploys with `serve run`; `mmserve serve --ray`
without an address stops every process of the Ray it started; CLI errors exit 2."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'); dev installs it")

from conftest import REPO, free_port, wait_ready  # noqa: E402
from ray_support import RayServerProcess, ray_processes  # noqa: E402
from test_server_split import _HEADERS, LOAD_S, _digits, _load, _multipart  # noqa: E402

MODEL_DIR = REPO / "models" / "digits-vit"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def digits():
    return _digits()


def _replica_pids(deployment: str) -> list[int]:
    return sorted(p.pid for p in ray_processes() if p.name().startswith(f"ray::ServeReplica:mmserve:{deployment}"))


def _labels(url: str, images: list[bytes]) -> list[str]:
    with httpx.Client(base_url=url, timeout=30) as c:
        return [c.post("/classify", content=_multipart(img), headers=_HEADERS).json()["predictions"][0]["label"]
                for img in images]


@pytest.mark.slow
def test_replica_killed_under_load_is_replaced(ray_cluster, digits) -> None:
    images, _ = digits
    server = RayServerProcess(["--classifier", str(MODEL_DIR), "--backend", "torch"], address=ray_cluster.address,
                              replicas=2)
    try:
        want = _labels(server.url, images)
        before = _replica_pids("digits-vit")
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
            now = _replica_pids("digits-vit")
            if len(now) == 2 and before[0] not in now:
                break
            time.sleep(0.5)
        assert len(now) == 2 and before[0] not in now, (before, now)
        wait_ready(server.url, 60, server.proc)
        assert _labels(server.url, images) == want
    finally:
        assert server.stop(), server.output()


def _ray_config(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mmserve"), "ray-config", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=os.environ.copy())


def test_ray_config_passes_rays_schema_and_deploys(ray_cluster, digits, tmp_path) -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    images, _ = digits
    port = free_port()
    done = _ray_config("--classifier", str(MODEL_DIR), "--backend", "torch", "--port", str(port),
                       "--min-replicas", "1", "--max-replicas", "2", "--num-cpus", "0.5")
    assert done.returncode == 0, done.stderr
    config = ServeDeploySchema.model_validate(yaml.safe_load(done.stdout))  # Ray's own config schema
    (app,) = config.applications
    assert app.import_path == "server.ray_serve.app:build_app" and app.route_prefix == "/"
    assert app.args["autoscaling"] == {"min_replicas": 1, "max_replicas": 2}
    path = tmp_path / "serve.yaml"
    path.write_text(done.stdout)
    log = open(tmp_path / "serve-run.log", "w+")
    proc = subprocess.Popen([str(BIN / "serve"), "run", str(path), "--address", ray_cluster.address],
                            cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 300, proc)
        got = _labels(url, images)
        with httpx.Client(base_url=url, timeout=30) as c:
            info = c.get("/v1/models").json()["models"][0]
        assert info["name"] == "digits-vit" and info["backend"] == "torch"
        assert len(got) == len(images) and all(label in [str(d) for d in range(10)] for label in got)
    finally:
        proc.send_signal(signal.SIGINT)  # serve run: Ctrl-C removes the application
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode is not None


@pytest.mark.parametrize("args, message", [
    (["--classifier", "no/such/dir"], "no/such/dir"),
    (["--classifier", str(MODEL_DIR), "--min-replicas", "1"], "--max-replicas"),
    (["--classifier", str(MODEL_DIR), "--min-replicas", "3", "--max-replicas", "2"], "more than"),
])
def test_ray_config_bad_input_exits_2(args: list[str], message: str) -> None:
    done = _ray_config(*args)
    assert done.returncode == 2 and message in done.stderr, (done.returncode, done.stderr)


@pytest.mark.slow
def test_serve_ray_without_address_stops_what_it_started(digits) -> None:
    """A private Ray: the CLI starts it on loopback, serves, and on SIGTERM leaves no process behind."""
    images, _ = digits
    server = RayServerProcess(["--classifier", str(MODEL_DIR), "--backend", "torch"], replicas=1)
    try:
        root = psutil.Process(server.proc.pid)
        started = root.children(recursive=True)
        assert any("raylet" in p.name() for p in started), [p.name() for p in started]
        assert len(_labels(server.url, images)) == len(images)
    finally:
        stopped = server.stop()
    assert stopped, server.output()
    _, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], [p.name() for p in alive]
