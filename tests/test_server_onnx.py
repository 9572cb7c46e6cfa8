"""The onnxruntime backend over real HTTP: checkpoints are exported once into the cache (keyed by
the weights' sha256) and reused, answers match the torch model run directly, explain works from
explain.onnx, concurrent requests stay correct, and the CLI refuses bad model paths clearly."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch
from conftest import REPO, ServerProcess
from num2words import num2words
from PIL import Image

from mmserve.checkpoints import load_model_dir
from mmserve.models.decoding import translate
from mmserve.tasks.image_classification import (
    ImagePreprocessing,
    decode_image,
    images_to_pixel_values,
    summarize_attention,
)
from mmserve.tasks.translation import load_tokenizer

DIGITS = REPO / "models" / "digits-vit"
TEXTS = [num2words(n) for n in (3, 42, 105, 999, 20_020, 345_678, 61, 8)]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DIGITS / "config.json").is_file(), reason="bundled digits-vit missing")]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.new("L", (32, 32), 255)
    x0, y0 = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    image.paste(0, (x0, y0, x0 + int(rng.integers(3, 14)), y0 + int(rng.integers(10, 20))))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


IMAGES = [_png(i) for i in range(12)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def server(cache, tiny_translator):
    srv = ServerProcess(["--classifier", str(DIGITS), "--translator", str(tiny_translator), "--backend", "onnxruntime",
                         "--onnx-cache-dir", str(cache), "--max-batch-size", "16", "--threads", "1"],
                        ready_timeout=240)
    yield srv
    assert srv.stop(), srv.output()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def torch_models(tiny_translator):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model_dir(DIGITS), load_model_dir(tiny_translator).model, load_tokenizer(tiny_translator)
    torch.set_num_threads(threads)


def test_checkpoints_were_exported_into_the_cache(client, cache, tiny_translator) -> None:
    models = {m["task"]: m for m in client.get("/v1/models").json()["models"]}
    for task, source in (("image-classification", DIGITS), ("translation", tiny_translator)):
        info = models[task]
        sha = load_model_dir(source).weights_sha256
        assert info["backend"] == "onnxruntime" and info["sha256"] == sha
        assert info["source"] == str(cache / f"{info['name']}-{sha[:16]}")
        assert (cache / f"{info['name']}-{sha[:16]}" / "manifest.json").is_file()
        assert info["extra"]["providers"] == ["CPUExecutionProvider"]


def test_classify_matches_torch(client, torch_models) -> None:
    loaded = torch_models[0]
    pre = ImagePreprocessing.model_validate(loaded.config.preprocessing)
    r = client.post("/classify", files=[("files", ("x.png", d)) for d in IMAGES], data={"top_k": "3", "explain": "true"})
    assert r.status_code == 200, r.text
    x = images_to_pixel_values([decode_image(d) for d in IMAGES], pre)
    with torch.inference_mode():
        probs, _ = loaded.model.classify(x)
        _, weights = loaded.model.forward_with_attention(x)
    summary = summarize_attention(weights)
    for i, pred in enumerate(r.json()["predictions"]):
        assert pred["label"] == loaded.config.labels[int(probs[i].argmax())]
        assert pred["score"] == pytest.approx(float(probs[i].max()), abs=1e-4)
        np.testing.assert_allclose(np.array(pred["explanation"]["attention"]).ravel(), summary.rollout[i].numpy(),
                                   atol=1e-4)


def test_translate_matches_torch(client, torch_models) -> None:
    _, model, tokenizer = torch_models
    for beam in (1, 3):
        r = client.post("/translate", json={"texts": TEXTS, "beam_size": beam})
        assert r.status_code == 200, r.text
        for text, got in zip(TEXTS, r.json()["translations"], strict=True):
            want = translate(model, tokenizer, [text], beam_size=beam)[0]
            assert got["text"] == want[0]
            assert got["score"] == pytest.approx(want[1], abs=1e-3)


def test_translate_refuses_words_outside_the_models_domain(client) -> None:
    r = client.post("/translate", json={"texts": ["forty-two", "hello world"]})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_text" and "'hello', 'world'" in r.json()["detail"]


def test_concurrent_mixed_requests(server, client, torch_models) -> None:
    _, model, tokenizer = torch_models
    rng = np.random.default_rng(3)
    jobs = []
    for n in range(120):
        if n % 2:
            jobs.append(("/translate", {"texts": [TEXTS[int(rng.integers(len(TEXTS)))]],
                                        "beam_size": int(rng.choice([1, 2])), "max_length": 12}))
        else:
            jobs.append(("/classify", {"images": [base64.b64encode(IMAGES[int(rng.integers(len(IMAGES)))]).decode()]}))

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as ac:
            return await asyncio.gather(*(ac.post(path, json=body) for path, body in jobs))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * len(jobs)
    single = client.post("/classify", files=[("files", ("x.png", d)) for d in IMAGES]).json()["predictions"]
    for (path, body), r in zip(jobs, responses, strict=True):
        if path == "/translate":
            want = translate(model, tokenizer, body["texts"], beam_size=body["beam_size"], max_length=12)[0]
            assert r.json()["translations"][0]["text"] == want[0]
        else:
            idx = IMAGES.index(base64.b64decode(body["images"][0]))
            assert r.json()["predictions"][0]["label"] == single[idx]["label"]
            assert r.json()["predictions"][0]["score"] == pytest.approx(single[idx]["score"], abs=1e-5)


def test_cached_export_is_reused_and_export_dirs_serve_directly(server, cache, tiny_translator) -> None:
    t0 = time.perf_counter()
    again = ServerProcess(["--classifier", str(DIGITS), "--backend", "onnxruntime", "--onnx-cache-dir", str(cache)],
                          env={"MMSERVE_LOG_LEVEL": "info"})
    try:
        assert "reusing cached ONNX export" in again.output()
        assert time.perf_counter() - t0 < 60
    finally:
        assert again.stop()
    export_dir = next(p for p in cache.iterdir() if p.name.startswith("digits-vit-"))
    direct = ServerProcess(["--classifier", str(export_dir), "--backend", "onnxruntime"])
    try:
        with httpx.Client(base_url=direct.url, timeout=30) as c:
            assert c.post("/classify", files=[("files", ("x.png", IMAGES[0]))]).status_code == 200
    finally:
        assert direct.stop()


def _serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "--port", "0", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_refuses_bad_model_paths(tmp_path, cache) -> None:
    r = _serve("--classifier", str(tmp_path / "nope"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = _serve("--classifier", str(DIGITS), "--backend", "tensorflow")
    assert r.returncode == 2 and "unknown backend 'tensorflow'" in r.stderr
    export_dir = next(p for p in cache.iterdir() if p.name.startswith("digits-vit-"))
    r = _serve("--classifier", str(export_dir), "--backend", "torch")
    assert r.returncode == 2 and "use --backend onnxruntime" in r.stderr, r.stderr[-2000:]
