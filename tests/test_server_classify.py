"""POST /classify over real HTTP (uvicorn subprocess, torch backend, bundled digits-vit): answers match
the model run directly one image at a time, explain, concurrency with batching, and every bad input
a 4xx with its reason."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import struct
import zlib

import httpx
import numpy as np
import pytest
import torch
from conftest import REPO, ServerProcess, metric_sum
from PIL import Image

from mmserve.checkpoints import load_model_dir
from mmserve.data.digits import split_from_config
from mmserve.tasks.image_classification import (
    ImagePreprocessing,
    decode_image,
    images_to_pixel_values,
    summarize_attention,
)
from mmserve.training.classifier import render_ink

MODEL_DIR = REPO / "models" / "digits-vit"
pytestmark = pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason="bundled digits-vit missing")


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def loaded():
    return load_model_dir(MODEL_DIR)


@pytest.fixture(scope="module")
def digit_images(loaded) -> list[bytes]:
    """40 held-out digits drawn as PNG/JPEG/WebP/BMP uploads of different sizes."""
    _, test = split_from_config(loaded.config.dataset)
    fmts = ["PNG", "JPEG", "WEBP", "BMP"]
    return [png(render_ink(g, 24 + 8 * (i % 5), Image.Resampling.BILINEAR), fmts[i % 4])
            for i, g in enumerate(test.ink[:40])]


@pytest.fixture(scope="module")
def reference(loaded, digit_images):
    """The model run directly, one image at a time (no batching anywhere)."""
    pre = ImagePreprocessing.model_validate(loaded.config.preprocessing)
    out = []
    with torch.inference_mode():
        for data in digit_images:
            probs, _ = loaded.model.classify(images_to_pixel_values([decode_image(data)], pre))
            out.append(probs[0].numpy())
    return out


# The server under test; tests/test_ray_classify.py runs this module's tests against the same
# server deployed on Ray Serve (overriding `server` and `request_id_pattern`).
SERVER_ARGS = ["--classifier", str(MODEL_DIR), "--backend", "torch", "--max-batch-size", "16",
               "--max-queue-delay-ms", "5", "--workers", "2"]
SERVER_ENV = {"MMSERVE_LIMIT_MAX_IMAGE_BYTES": "200000", "MMSERVE_LIMIT_MAX_IMAGE_PIXELS": "4000000",
              "MMSERVE_LIMIT_MAX_BODY_BYTES": "1000000", "MMSERVE_LIMIT_MAX_IMAGES": "16"}


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(SERVER_ARGS, env=SERVER_ENV)
    yield srv
    assert srv.stop(), srv.output()


@pytest.fixture(scope="module")
def request_id_pattern() -> str:
    """The form of a request id the server assigns (the client sent none)."""
    return r"[0-9a-f]{32}"


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def check(prediction: dict, probs: np.ndarray, labels: list[str], top_k: int) -> None:
    order = np.argsort(-probs, kind="stable")
    assert prediction["label"] == labels[order[0]]
    assert prediction["score"] == pytest.approx(float(probs[order[0]]), abs=1e-5)
    assert len(prediction["top_k"]) == top_k
    for entry, idx in zip(prediction["top_k"], order[:top_k], strict=True):
        assert entry["score"] == pytest.approx(float(probs[idx]), abs=1e-5)
    assert [e["score"] for e in prediction["top_k"]] == sorted((e["score"] for e in prediction["top_k"]), reverse=True)


# ------------------------------------------------------------------------------------- correctness


def test_multipart_many_files_match_model(client, loaded, digit_images, reference, request_id_pattern) -> None:
    files = [("files", (f"d{i}", data, "application/octet-stream")) for i, data in enumerate(digit_images[:12])]
    r = client.post("/classify", files=files, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "digits-vit" and len(body["predictions"]) == 12
    for pred, probs in zip(body["predictions"], reference[:12], strict=True):
        check(pred, probs, loaded.config.labels, 3)
        assert "explanation" not in pred
    assert re.fullmatch(request_id_pattern, r.headers["x-request-id"])


def test_json_base64_matches_model(client, loaded, digit_images, reference) -> None:
    images = [base64.b64encode(d).decode() for d in digit_images[12:20]]
    images[1] = images[1].rstrip("=")  # padding is optional
    images[2] = "data:image/png;base64," + images[2]
    r = client.post("/classify", json={"images": images, "top_k": 10})
    assert r.status_code == 200, r.text
    for pred, probs in zip(r.json()["predictions"], reference[12:20], strict=True):
        check(pred, probs, loaded.config.labels, 10)


def test_explain_gives_rollout_over_patch_grid(client, loaded, digit_images) -> None:
    r = client.post("/classify", json={"images": [base64.b64encode(digit_images[0]).decode()], "explain": True,
                                       "top_k": 1}, headers={"X-Request-ID": "explain-1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "explain-1"
    ex = r.json()["predictions"][0]["explanation"]
    pre = ImagePreprocessing.model_validate(loaded.config.preprocessing)
    with torch.inference_mode():
        _, weights = loaded.model.forward_with_attention(images_to_pixel_values([decode_image(digit_images[0])], pre))
    summary = summarize_attention(weights, ex["threshold"])
    assert ex["grid"] == [4, 4]
    got = np.array(ex["attention"])
    assert got.shape == (4, 4) and got.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(got.ravel(), summary.rollout[0].numpy(), atol=1e-5)
    assert ex["sparsity"] == pytest.approx(float(summary.sparsity[0]), abs=1e-6)
    assert 0 <= ex["zero_fraction"] <= ex["sparsity"] <= 1


def test_models_endpoint(client, loaded) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    (info,) = r.json()["models"]
    assert info["name"] == "digits-vit" and info["task"] == "image-classification"
    assert info["backend"] == "torch" and info["device"] == "cpu" and info["max_batch_size"] == 16
    assert info["sha256"] == loaded.weights_sha256
    assert info["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert info["labels"] == loaded.config.labels


def test_translate_not_served_here(client) -> None:
    r = client.post("/translate", json={"texts": ["one"]})
    assert r.status_code == 404 and r.json()["code"] == "no_model"


# ------------------------------------------------------------------------------------- concurrency



@pytest.mark.slow
def test_hundreds_of_concurrent_requests_are_batched(server, client, loaded, digit_images, reference) -> None:
    before = client.get("/metrics").text
    rng = np.random.default_rng(0)
    requests = [rng.choice(len(digit_images), size=int(rng.integers(1, 4)), replace=True).tolist()
                for _ in range(300)]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as ac:
            async def one(idx: list[int], n: int) -> httpx.Response:
                if n % 2:
                    return await ac.post("/classify", json={"images": [base64.b64encode(digit_images[i]).decode()
                                                                       for i in idx], "top_k": 2})
                return await ac.post("/classify", files=[("files", ("x", digit_images[i])) for i in idx],
                                     data={"top_k": "2"})
            return await asyncio.gather(*(one(idx, n) for n, idx in enumerate(requests)))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * len(requests)
    for idx, r in zip(requests, responses, strict=True):
        preds = r.json()["predictions"]
        assert len(preds) == len(idx)
        for pred, i in zip(preds, idx, strict=True):
            check(pred, reference[i], loaded.config.labels, 2)
    after = client.get("/metrics").text
    items = sum(len(i) for i in requests)
    batches = metric_sum(after, "mmserve_batch_size_count", model="digits-vit") - metric_sum(
        before, "mmserve_batch_size_count", model="digits-vit")
    summed = metric_sum(after, "mmserve_batch_size_sum", model="digits-vit") - metric_sum(
        before, "mmserve_batch_size_sum", model="digits-vit")
    assert summed == items
    print(f"\n{items} items in {batches:.0f} batches (mean {items / batches:.1f})")
    assert batches < items / 2, "dynamic batching should merge concurrent requests"
    big = sum(float(line.rsplit(" ", 1)[1]) for line in after.splitlines()
              if line.startswith('mmserve_batch_size_bucket{le="16.0",model="digits-vit"}'))
    assert big > 0
    assert metric_sum(after, "mmserve_requests_total", endpoint="/classify", status="200") >= len(requests)
    assert metric_sum(after, "mmserve_queue_wait_seconds_count", model="digits-vit") >= items


# ------------------------------------------------------------------------------------- bad input


def _truncated_png(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring a huge image with a tiny (compressed) body."""
    raw = zlib.compress(b"\x00" * (width + 1) * 16)
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "case, status, code",
    [
        ("not_an_image", 422, "invalid_image"),
        ("truncated", 422, "invalid_image"),
        ("bomb", 413, "image_too_large"),
        ("image_too_big", 413, "image_too_large"),
        ("gif", 422, "invalid_image"),
        ("empty_file", 422, "invalid_image"),
        ("no_files", 422, "empty_request"),
        ("too_many", 422, "too_many_items"),
        ("unknown_field", 422, "invalid_request"),
        ("top_k_zero", 422, "invalid_request"),
        ("top_k_big", 422, "invalid_request"),
        ("top_k_text", 422, "invalid_request"),
        ("explain_text", 422, "invalid_request"),
        ("field_not_file", 422, "invalid_request"),
    ],
)
def test_multipart_bad_input(client, digit_images, case: str, status: int, code: str) -> None:
    good = [("files", ("ok.png", digit_images[0], "image/png"))]
    data: dict = {}
    files = good
    if case == "not_an_image":
        files = [("files", ("x.png", b"hello, this is text", "image/png"))]
    elif case == "truncated":
        files = [("files", ("x.png", _truncated_png(png(Image.new("L", (300, 300), 128))), "image/png"))]
    elif case == "bomb":
        files = [("files", ("bomb.png", _bomb_png(20000, 20000), "image/png"))]
    elif case == "image_too_big":
        files = [("files", ("big.bmp", png(Image.new("RGB", (300, 300)), "BMP"), "image/bmp"))]
    elif case == "gif":
        files = [("files", ("x.gif", png(Image.new("L", (8, 8)), "GIF"), "image/gif"))]
    elif case == "empty_file":
        files = [("files", ("x.png", b"", "image/png"))]
    elif case == "no_files":
        files, data = [], {"top_k": "2"}
    elif case == "too_many":
        files = good * 17
    elif case == "unknown_field":
        data = {"topk": "2"}
    elif case == "top_k_zero":
        data = {"top_k": "0"}
    elif case == "top_k_big":
        data = {"top_k": "11"}
    elif case == "top_k_text":
        data = {"top_k": "three"}
    elif case == "explain_text":
        data = {"explain": "maybe"}
    elif case == "field_not_file":
        files, data = [("dummy", ("x", b"", "text/plain"))], {}
        r = client.post("/classify", content=b'--b\r\nContent-Disposition: form-data; name="files"\r\n\r\nabc\r\n--b--\r\n',
                        headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == status and r.json()["code"] == code, r.text
        return
    if case == "no_files":
        r = client.post("/classify", data=data, headers={"Content-Type": "multipart/form-data; boundary=xyz"},
                        content=b"--xyz\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n2\r\n--xyz--\r\n")
    else:
        r = client.post("/classify", files=files, data=data)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and body["detail"] and body["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize(
    "payload, status, code",
    [
        (b'{"images": []}', 422, "invalid_request"),
        (b'{"images": ["%s"], "top_k": 0}', 422, "invalid_request"),
        (b'{"images": ["%s"], "top_k": 11}', 422, "invalid_request"),
        (b'{"images": ["%s"], "top_k": "3"}', 422, "invalid_request"),
        (b'{"images": ["%s"], "top_k": 2.5}', 422, "invalid_request"),
        (b'{"images": ["%s"], "explain": "yes"}', 422, "invalid_request"),
        (b'{"images": ["%s"], "colour": true}', 422, "invalid_request"),
        (b'{"images": "%s"}', 422, "invalid_request"),
        (b'{"images": [42]}', 422, "invalid_request"),
        (b'{"images": ["not base64!!"]}', 400, "invalid_base64"),
        (b'{"images": ["aGVsbG8gd29ybGQ="]}', 422, "invalid_image"),
        (b'{"images": ["%s"], "top_k": NaN}', 400, "invalid_json"),
        (b'{"images": [', 400, "invalid_json"),
        (b'["%s"]', 422, "invalid_request"),
        (b'{"images": ["\xff\xfe"]}', 400, "invalid_utf8"),
        (b"", 400, "invalid_json"),
    ],
)
def test_json_bad_input(client, digit_images, payload: bytes, status: int, code: str) -> None:
    if b"%s" in payload:
        payload = payload.replace(b"%s", base64.b64encode(digit_images[0]))
    r = client.post("/classify", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


def test_limits_on_body_and_base64_image(client, digit_images) -> None:
    big = base64.b64encode(b"\0" * 300_000).decode()
    r = client.post("/classify", json={"images": [big]})
    assert r.status_code == 413 and r.json()["code"] == "image_too_large"
    r = client.post("/classify", json={"images": ["A" * 1_100_000]})
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(40):
            yield b"x" * 50_000

    r = client.post("/classify", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    r = client.post("/classify", json={"images": [base64.b64encode(digit_images[0]).decode()] * 17})
    assert r.status_code == 422 and r.json()["code"] == "too_many_items"


def test_wrong_content_type_and_method(client) -> None:
    r = client.post("/classify", content=b"abc", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
    r = client.get("/classify")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_server_survived_the_bad_inputs(client) -> None:
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics").text
    assert metric_sum(metrics, "mmserve_requests_total", endpoint="/classify", status="500") == 0


def test_openapi_document_and_docs(client) -> None:
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json", "image/png", "image/jpeg", "image/webp",
                         "image/bmp"}  # raw image bodies (one image, options in the query string)
    assert body["application/json"]["schema"]["properties"]["top_k"]["maximum"] == 10  # this model's labels
    assert body["application/json"]["schema"]["properties"]["images"]["maxItems"] == 16  # this server's limit
    assert "/translate" in doc["paths"] and "/v1/models" in doc["paths"]
    assert "securitySchemes" not in doc.get("components", {})  # no API key configured, none documented
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------------- raw image bodies


def test_raw_image_body_matches_multipart(client, digit_images) -> None:
    """`Content-Type: image/png` with the file as the whole body: the same answer as a multipart upload."""
    for data in digit_images[:3]:
        raw = client.post("/classify?top_k=3", content=data, headers={"Content-Type": "image/png"})
        form = client.post("/classify", files=[("files", ("x.png", data))], data={"top_k": "3"})
        assert raw.status_code == 200, raw.text
        assert raw.json() == form.json()
    r = client.post("/classify?explain=true&top_k=1", content=digit_images[0], headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and "explanation" in r.json()["predictions"][0]


@pytest.mark.parametrize(
    "query, body, status, code",
    [
        ("", b"", 422, "empty_request"),
        ("", b"not an image", 422, "invalid_image"),
        ("?top_k=0", None, 422, "invalid_request"),
        ("?top_k=x", None, 422, "invalid_request"),
        ("?explain=maybe", None, 422, "invalid_request"),
        ("?topk=3", None, 422, "invalid_request"),
    ],
)
def test_raw_image_body_bad_input(client, digit_images, query: str, body, status: int, code: str) -> None:
    data = digit_images[0] if body is None else body
    r = client.post(f"/classify{query}", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["detail"]


def test_query_parameters_refused_outside_raw_bodies(client, digit_images) -> None:
    r = client.post("/classify?top_k=2", files=[("files", ("x.png", digit_images[0]))])
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
