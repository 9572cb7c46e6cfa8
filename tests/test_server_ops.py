"""Operational behaviour over real HTTP (uvicorn in a thread of the test process, so the test can
register its own backends): a backend fault fails only its batch, overload answers 503 + Retry-After,
client disconnects cancel queued work, readiness, API key, CORS, graceful shutdown."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import REPO, ServerThread, metric_sum
from PIL import Image

from mmserve.tasks.image_classification import ImagePreprocessing, ink_to_pixel_values

from server.backends import ClassifierOutput, LoadOptions, register_backend, unregister_backend
from server.backends.torch_backend import load as torch_load
from server.settings import Limits, ServerSettings

MODEL_DIR = REPO / "models" / "digits-vit"
pytestmark = pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason="bundled digits-vit missing")


def _png(value: int = 0) -> bytes:
    image = Image.new("L", (16, 16), 255)
    image.paste(value, (4, 2, 12, 14))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


DIGIT = _png(0)
BLANK = _png(255)  # no ink: preprocesses to the all-zero ink grid, our "poison" row below
B64 = base64.b64encode(DIGIT).decode()


class Instrumented:
    """Wraps the torch classifier: optional delay or gate per run, fails any batch holding a blank
    image (the poison), records the size of every batch it ran (negative = failed)."""

    def __init__(self, inner, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.inner = inner
        self.task, self.config, self.info = inner.task, inner.config, inner.info
        self.delay = delay
        self.gate = gate
        self.batches: list[int] = []
        self.entered = threading.Event()  # set when a batch reaches run()
        pre = ImagePreprocessing.model_validate(inner.config.preprocessing)
        self.poison = ink_to_pixel_values(np.zeros((1, pre.image_size, pre.image_size)), pre).numpy()[0]

    @property
    def name(self) -> str:
        return self.inner.name

    def warmup(self) -> None:
        self.inner.warmup()

    def close(self) -> None:
        pass

    def run(self, pixel_values: np.ndarray, explain: bool = False) -> ClassifierOutput:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        if any(np.array_equal(row, self.poison) for row in pixel_values):
            self.batches.append(-len(pixel_values))
            raise RuntimeError("injected fault: a poisoned row reached the model")
        self.batches.append(len(pixel_values))
        return self.inner.run(pixel_values, explain)


@pytest.fixture
def instrumented():
    """make(name, delay=, gate=, **settings) -> (backend, server): registers backend `name` that wraps
    the torch loader in `Instrumented`, and serves the bundled digits model with it."""
    created = []

    def make(name: str, delay: float = 0.0, gate: threading.Event | None = None, **overrides):
        holder: dict = {}

        def loader(path, task, options: LoadOptions):
            holder["backend"] = Instrumented(torch_load(path, task, options), delay, gate)
            return holder["backend"]

        register_backend(name, loader, replace=True)
        server = ServerThread(ServerSettings(classifier=MODEL_DIR, backend=name, **overrides))
        created.append((name, server))
        return holder["backend"], server

    yield make
    for name, server in created:
        server.stop()
        unregister_backend(name)



async def _post_many(url: str, payloads: list[dict], **kwargs) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30, **kwargs) as client:
        return await asyncio.gather(*(client.post("/classify", json=p) for p in payloads))


# ------------------------------------------------------------------------------------- faults


def test_backend_error_fails_only_its_batch(instrumented, caplog) -> None:
    """Batches of 4 formed within a 300 ms window: the batch holding a poisoned (blank) image fails
    with 500 + request id for exactly its 4 requests; the batches before and after it succeed."""
    backend, srv = instrumented("faulty", max_batch_size=4, max_queue_delay_ms=300)
    good = {"images": [B64]}
    bad = {"images": [base64.b64encode(BLANK).decode()]}
    first = asyncio.run(_post_many(srv.url, [good] * 4))
    assert [r.status_code for r in first] == [200] * 4
    caplog.set_level("ERROR", logger="mmserve.server.batching")
    mixed = asyncio.run(_post_many(srv.url, [good, good, bad, good]))
    assert [r.status_code for r in mixed] == [500] * 4
    for r in mixed:
        body = r.json()
        assert body["code"] == "backend_error" and body["request_id"] == r.headers["x-request-id"]
        assert "injected fault" not in r.text  # no internals leak
        assert body["request_id"] in caplog.text  # ... but the log names every request id
    after = asyncio.run(_post_many(srv.url, [good] * 4))
    assert [r.status_code for r in after] == [200] * 4
    assert backend.batches[-3:] == [4, -4, 4]
    with httpx.Client(base_url=srv.url) as client:
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
    assert metric_sum(metrics, "mmserve_backend_errors_total") == 1
    assert metric_sum(metrics, "mmserve_requests_total", endpoint="/classify", status="500") == 4


def test_request_spanning_batches_fails_if_one_of_its_batches_fails(instrumented) -> None:
    backend, srv = instrumented("faulty2", max_batch_size=2, max_queue_delay_ms=1)
    blank = base64.b64encode(BLANK).decode()
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        r = client.post("/classify", json={"images": [B64, B64, B64, B64, B64]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 5
        assert backend.batches[-3:] == [2, 2, 1]  # one request, three batches, results back in order
        r = client.post("/classify", json={"images": [B64, B64, blank, B64]})
        assert r.status_code == 500 and r.json()["code"] == "backend_error"
        assert client.post("/classify", json={"images": [B64]}).status_code == 200


# ------------------------------------------------------------------------------------- overload


def test_tiny_queue_overload_gives_503_retry_after(instrumented) -> None:
    backend, srv = instrumented("slow", delay=0.2, max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0,
                                limits=Limits(max_images=2, max_texts=2))
    responses = asyncio.run(_post_many(srv.url, [{"images": [B64]}] * 12))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    assert codes.count(200) >= 2
    for r in responses:
        if r.status_code == 503:
            assert r.json()["code"] == "overloaded"
            assert int(r.headers["retry-after"]) >= 1
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.post("/classify", json={"images": [B64]}).status_code == 200
        metrics = client.get("/metrics").text
    assert metric_sum(metrics, "mmserve_rejected_total", reason="queue_full") == codes.count(503)


def test_queue_must_hold_the_largest_request() -> None:
    """Else a maximal request could never be queued and 503 + Retry-After would be a lie."""
    with pytest.raises(ValueError, match="max_queue_size"):
        ServerSettings(classifier=MODEL_DIR, max_queue_size=3, limits=Limits(max_images=4, max_texts=2))


def test_client_disconnect_cancels_queued_work(instrumented) -> None:
    gate = threading.Event()
    backend, srv = instrumented("gated", gate=gate, max_batch_size=1, max_queue_delay_ms=0)

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            held = asyncio.create_task(client.post("/classify", json={"images": [B64]}))
            await asyncio.to_thread(backend.entered.wait, 10)  # the worker now blocks on the gate with it
            with pytest.raises(httpx.TimeoutException):  # this one waits in the queue; then we hang up
                await client.post("/classify", json={"images": [B64, B64, B64]}, timeout=0.5)
            await asyncio.sleep(0.3)
            gate.set()
            assert (await held).status_code == 200

    runs_before = len(backend.batches)
    asyncio.run(scenario())
    time.sleep(0.3)
    with httpx.Client(base_url=srv.url) as client:
        metrics = client.get("/metrics").text
    assert len(backend.batches) - runs_before == 1, backend.batches  # the abandoned items never ran
    assert metric_sum(metrics, "mmserve_rejected_total", reason="cancelled") == 3


def test_graceful_shutdown_drains_in_flight(instrumented) -> None:
    backend, srv = instrumented("drain", delay=0.3, max_batch_size=2, max_queue_delay_ms=0)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            tasks = [asyncio.create_task(client.post("/classify", json={"images": [B64]})) for _ in range(5)]
            await asyncio.sleep(0.15)
            srv.server.should_exit = True  # what SIGTERM does
            return await asyncio.gather(*tasks)

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 5
    srv.thread.join(10)
    assert not srv.thread.is_alive()
    assert not srv.app.state.server.classifier.batcher.running


# ------------------------------------------------------------------------------------- readiness


def test_not_ready_until_loaded_and_warm() -> None:
    gate = threading.Event()

    def loader(path, task, options):
        gate.wait(30)
        return torch_load(path, task, options)

    register_backend("slowload", loader, replace=True)
    srv = ServerThread(ServerSettings(classifier=MODEL_DIR, backend="slowload"), wait="live")
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            r = client.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "loading" and "retry-after" in r.headers
            r = client.post("/classify", json={"images": [B64]})
            assert r.status_code == 503 and r.json()["code"] == "not_ready"
            gate.set()
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.get("/readyz").json()["status"] == "ready"
            assert client.post("/classify", json={"images": [B64]}).status_code == 200
    finally:
        gate.set()
        srv.stop()
        unregister_backend("slowload")


def test_failed_load_is_live_but_never_ready() -> None:
    def loader(path, task, options):
        raise RuntimeError("weights are on fire")

    register_backend("broken", loader, replace=True)
    srv = ServerThread(ServerSettings(classifier=MODEL_DIR, backend="broken"), wait="live")
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            deadline = time.monotonic() + 10
            while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
                time.sleep(0.05)
            r = client.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "failed" and "on fire" in r.json()["error"]
            assert client.get("/healthz").status_code == 200
            assert client.post("/classify", json={"images": [B64]}).status_code == 503
    finally:
        srv.stop()
        unregister_backend("broken")


# ------------------------------------------------------------------------------------- security


def test_api_key_and_cors(instrumented) -> None:
    _, srv = instrumented("secured", api_key="s3cret-key", cors_origins=["https://app.example"])
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        r = client.post("/classify", json={"images": [B64]})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        r = client.post("/classify", json={"images": [B64]}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = client.post("/classify", json={"images": [B64]}, headers={"Authorization": "Basic s3cret-key"})
        assert r.status_code == 401
        r = client.post("/classify", json={"images": [B64]}, headers={"Authorization": "Bearer s3cret-key"})
        assert r.status_code == 200
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(open_path).status_code == 200
        pre = client.options("/classify", headers={"Origin": "https://app.example",
                                                   "Access-Control-Request-Method": "POST"})
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        pre = client.options("/classify", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


def test_no_api_key_no_cors_by_default(instrumented) -> None:
    _, srv = instrumented("open")
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        r = client.post("/classify", json={"images": [B64]}, headers={"Origin": "https://app.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        assert client.get("/v1/models").status_code == 200


def test_queue_and_request_timeouts(instrumented) -> None:
    """Nothing hangs: an item not started within queue_timeout_s gets 503 (and never runs); a request
    not finished within request_timeout_s gets 504."""
    gate = threading.Event()
    backend, srv = instrumented("stuck", gate=gate, max_batch_size=1, max_queue_delay_ms=0, queue_timeout_s=0.8,
                                request_timeout_s=1.5)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            first = asyncio.create_task(client.post("/classify", json={"images": [B64]}))
            await asyncio.to_thread(backend.entered.wait, 10)  # the worker now holds `first` at the gate
            second = asyncio.create_task(client.post("/classify", json={"images": [B64]}))
            await asyncio.sleep(1.2)  # `second` has now waited longer than queue_timeout_s
            gate.set()
            return await first, await second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200, first.text
    assert second.status_code == 503 and second.json()["code"] == "queue_timeout", second.text
    assert backend.batches == [1]  # the expired item never reached the model

    gate.clear()
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        t0 = time.monotonic()
        threading.Timer(3.0, gate.set).start()
        r = client.post("/classify", json={"images": [B64]})
        assert r.status_code == 504 and r.json()["code"] == "timeout"
        assert time.monotonic() - t0 < 2.9
        assert client.get("/readyz").status_code == 200
