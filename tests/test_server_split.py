"""Split serving (`mmserve serve --frontends N`): the engine and the frontends are killed under load and
every request is counted. The rest of the HTTP suite already runs against the split server (the
default); these tests are about the process model itself."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import httpx
import numpy as np
import pytest

from conftest import REPO, ServerProcess, metric_sum, wait_ready

MODEL_DIR = REPO / "models" / "digits-vit"
LOAD_S = 8.0  # every load loop below is bounded in time and in count
MAX_REQUESTS = 3000


def _digits() -> tuple[list[bytes], list[str]]:
    """Eight test digits as 32x32 PNGs (and their dataset labels)."""
    import io

    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    blobs = []
    for i in range(8):
        ink = digits.images[i]
        img = Image.fromarray((255 - ink * 255 / 16).astype(np.uint8)).resize((32, 32), Image.NEAREST)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        blobs.append(buf.getvalue())
    return blobs, [str(t) for t in digits.target[:8]]


async def _load(url: str, images: list[bytes], action, concurrency: int = 32) -> list:
    """`concurrency` clients send one image per request until LOAD_S passes; `action` runs once 50
    requests were answered 200 (or 4 s before the end on a very slow machine). Each outcome: (status, code, image index, label, Retry-After) or
    ("error", exception name, when)."""
    outcomes: list = []
    deadline = time.monotonic() + LOAD_S
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as ac:
        async def client(n: int) -> None:
            i = n
            while time.monotonic() < deadline and len(outcomes) < MAX_REQUESTS:
                i = (i + 1) % len(images)
                try:
                    r = await ac.post("/classify", content=_multipart(images[i]), headers=_HEADERS)
                except httpx.TransportError as exc:  # the frontend holding this connection was killed
                    outcomes.append(("error", type(exc).__name__, time.monotonic()))
                    continue
                body = r.json()
                label = body["predictions"][0]["label"] if r.status_code == 200 else None
                outcomes.append((r.status_code, body.get("code"), i, label, r.headers.get("retry-after")))

        async def trigger() -> None:
            while sum(o[0] == 200 for o in outcomes) < 50 and time.monotonic() < deadline - 4:
                await asyncio.sleep(0.05)
            action()

        await asyncio.gather(trigger(), *(client(n) for n in range(concurrency)))
    return outcomes


_BOUNDARY = "mmservesplittest"
_HEADERS = {"Content-Type": f"multipart/form-data; boundary={_BOUNDARY}"}


def _multipart(png: bytes) -> bytes:
    return (f"--{_BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{_BOUNDARY}--\r\n".encode()


def _label_once_every_frontend_is_ready(c: httpx.Client, png: bytes, timeout: float = 30.0) -> str:
    """The label of one image. /readyz answered 200 from ONE frontend; another frontend may not have had
    the engine's first status yet and answers 503 `not_ready` + Retry-After (the documented contract), so
    a client that gets that retries, as this does; any other answer fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.post("/classify", content=_multipart(png), headers=_HEADERS)
        if r.status_code == 200:
            return r.json()["predictions"][0]["label"]
        assert r.status_code == 503 and r.json()["code"] == "not_ready" and "retry-after" in r.headers, r.text
        assert time.monotonic() < deadline, f"a frontend stayed not ready for {timeout} s: {r.text}"
        time.sleep(float(r.headers["retry-after"]) / 10)


def _pids(server: ServerProcess, pattern: str) -> list[int]:
    return [int(p) for p in re.findall(pattern, server.output())]


@pytest.fixture(scope="module")
def digits():
    return _digits()


@pytest.mark.slow
def test_engine_killed_under_load_fails_fast_and_recovers(digits) -> None:
    images, _ = digits
    server = ServerProcess(["--classifier", str(MODEL_DIR), "--backend", "torch", "--frontends", "1"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            want = [_label_once_every_frontend_is_ready(c, img) for img in images]
        engine = _pids(server, r"engine process (\d+) started")[-1]
        t0 = time.monotonic()
        outcomes = asyncio.run(_load(server.url, images, lambda: os.kill(engine, signal.SIGKILL)))
        elapsed = time.monotonic() - t0
        statuses = [o[0] for o in outcomes]
        assert "error" not in statuses, [o for o in outcomes if o[0] == "error"][:3]
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        refused = [o for o in outcomes if o[0] == 503]
        assert refused, "killing the engine should have refused some requests"
        assert statuses.count(200) > 0
        assert {o[1] for o in refused} <= {"engine_restarting", "not_ready"}
        assert all(o[4] for o in refused), "every 503 carries Retry-After"
        wrong = [o for o in outcomes if o[0] == 200 and o[3] != want[o[2]]]
        assert not wrong, wrong[:3]
        assert elapsed < LOAD_S + 31, "no request may hang"
        print(f"\nengine killed under load: {statuses.count(200)} answered 200 (all correct), "
              f"{len(refused)} answered 503, 0 unanswered")
        wait_ready(server.url, 120, server.proc)  # the supervisor started a new engine by itself
        assert len(_pids(server, r"engine process (\d+) started")) == 2
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert _label_once_every_frontend_is_ready(c, images[0]) == want[0]
            metrics = c.get("/metrics").text
            assert "mmserve_ready 1.0" in metrics
    finally:
        assert server.stop()


@pytest.mark.slow
def test_frontend_killed_under_load_is_replaced(digits) -> None:
    images, _ = digits
    server = ServerProcess(["--classifier", str(MODEL_DIR), "--backend", "torch", "--frontends", "2"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            want = [_label_once_every_frontend_is_ready(c, img) for img in images]
        frontends = _pids(server, r"Started server process \[(\d+)\]")
        assert len(frontends) == 2
        killed_at: list[float] = []

        def kill() -> None:
            # The frontend holding the most connections (open descriptors): the kill must hit clients.
            busiest = max(frontends, key=lambda pid: len(os.listdir(f"/proc/{pid}/fd")))
            killed_at.append(time.monotonic())
            os.kill(busiest, signal.SIGKILL)

        outcomes = asyncio.run(_load(server.url, images, kill))
        errors = [o for o in outcomes if o[0] == "error"]
        answered = [o for o in outcomes if o[0] != "error"]
        assert {o[0] for o in answered} == {200}, sorted({o[0] for o in answered})
        wrong = [o for o in answered if o[3] != want[o[2]]]
        assert not wrong, wrong[:3]
        # Only requests the killed process held can be lost (their connection died with it): at most one
        # per client connection, all at the moment of the kill.
        assert len(errors) <= 32
        assert all(o[2] - killed_at[0] < 2.0 for o in errors)
        print(f"\nfrontend killed under load: {len(answered)} answered 200 (all correct), "
              f"{len(errors)} connections lost with the killed process")
        deadline = time.monotonic() + 90
        while len(_pids(server, r"Started server process \[(\d+)\]")) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_pids(server, r"Started server process \[(\d+)\]")) == 3, "a new frontend replaces the dead one"
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for img, label in zip(images, want):
                assert c.post("/classify", content=_multipart(img), headers=_HEADERS).json()[
                    "predictions"][0]["label"] == label
    finally:
        assert server.stop()


@pytest.mark.slow
def test_cancellation_overload_and_drain_cross_processes(digits) -> None:
    """The batching contracts hold when the batcher lives in another process: a client that hangs up
    drops its queued items in the engine, a full engine queue answers 503 + Retry-After through the
    frontend, and SIGTERM drains requests the engine still holds."""
    images, _ = digits
    server = ServerProcess(["--classifier", str(MODEL_DIR), "--backend", "slow-torch", "--plugin",
                            "tests.split_plugin_slow", "--frontends", "1", "--max-batch-size", "1",
                            "--max-queue-delay-ms", "0", "--max-queue-size", "4"],
                           env={"MMSERVE_LIMIT_MAX_IMAGES": "4", "MMSERVE_LIMIT_MAX_TEXTS": "4"})
    files = lambda n: [("files", ("x.png", images[0]))] * n  # noqa: E731
    try:
        async def cancel() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as ac:
                held = asyncio.create_task(ac.post("/classify", files=files(1)))
                await asyncio.sleep(0.2)  # the engine is now running it (0.5 s)
                with pytest.raises(httpx.TimeoutException):  # queued behind it; then we hang up
                    await ac.post("/classify", files=files(3), timeout=0.2)
                assert (await held).status_code == 200

        with httpx.Client(base_url=server.url, timeout=30) as c:
            before = c.get("/metrics").text
            asyncio.run(cancel())
            time.sleep(1.0)
            after = c.get("/metrics").text
        assert metric_sum(after, "mmserve_rejected_total", reason="cancelled") - metric_sum(
            before, "mmserve_rejected_total", reason="cancelled") == 3
        assert metric_sum(after, "mmserve_batch_size_count") - metric_sum(before, "mmserve_batch_size_count") == 1

        async def overload() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as ac:
                return await asyncio.gather(*(ac.post("/classify", files=files(4)) for _ in range(3)))

        responses = asyncio.run(overload())
        refused = [r for r in responses if r.status_code == 503]
        assert refused and all(r.json()["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1
                               and r.json()["request_id"] == r.headers["x-request-id"] for r in refused)
        assert all(r.status_code == 200 for r in responses if r not in refused)

        async def drain() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as ac:
                tasks = [asyncio.create_task(ac.post("/classify", files=files(1))) for _ in range(3)]
                await asyncio.sleep(0.3)
                server.proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        assert [r.status_code for r in asyncio.run(drain())] == [200] * 3
    finally:
        assert server.stop()


def test_default_frontends_follow_the_core_count() -> None:
    from server.supervisor import default_frontends

    assert [default_frontends(n) for n in (1, 2, 3, 4, 16, 64)] == [1, 1, 1, 2, 8, 8]


def test_wire_rows_cross_as_one_frame_without_copies() -> None:
    """Rows are stacked once into one frame; the engine's items are views of that frame (no copy)."""
    import msgspec

    from server import wire
    from server.continuous import TranslationJob

    rows = [np.full((1, 8, 8), i, dtype=np.float32) for i in range(3)]
    submit = wire.Submit(7, "digits-vit", True, "rid")
    frames = wire.pack_payloads(submit, rows)
    assert len(frames) == 1 and submit.shape == (3, 1, 8, 8) and submit.dtype == "float32"
    decoded = wire.TO_ENGINE.decode(wire.ENCODER.encode(submit))
    frame = bytes(frames[0])
    items = wire.unpack_payloads(decoded, [frame])
    assert all(np.array_equal(a, b) for a, b in zip(items, rows))
    assert all(np.shares_memory(item, np.frombuffer(frame, dtype=np.uint8)) for item in items)

    jobs = [TranslationJob((5, 6, 2), 3, 20)]
    submit = wire.Submit(8, "numbers-en-de", None, "rid")
    assert wire.pack_payloads(submit, jobs) == []
    assert wire.unpack_payloads(wire.TO_ENGINE.decode(wire.ENCODER.encode(submit)), []) == jobs

    row = wire.Row({"label": "7", "score": 0.5, "top_k": []}, None)
    decoder = msgspec.msgpack.Decoder(list[wire.Row])
    assert decoder.decode(wire.ENCODER.encode([row])) == [row]
