"""mmserve on Ray Serve, the operations side: the config file `mmserve ray-config` writes passes
Ray's own schema and deploys with `serve run`; `mmserve serve --ray` without an address stops every
process of the Ray it started; CLI errors exit 2. (A replica killed under load: test_ray_classify.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'); dev installs it")

from conftest import REPO, free_port, wait_ready  # noqa: E402
from ray_support import RayServerProcess, labels  # noqa: E402
from test_server_split import _digits  # noqa: E402

MODEL_DIR = REPO / "models" / "digits-vit"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def digits():
    return _digits()


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
        got = labels(url, images)
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
        assert len(labels(server.url, images)) == len(images)
    finally:
        stopped = server.stop()
    assert stopped, server.output()
    _, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], [p.name() for p in alive]
