"""POST /translate over real HTTP (uvicorn subprocess, torch backend, a small random translator):
answers equal `mmserve.models.decoding.translate` run on each text alone, under heavy concurrency with
continuous batching (sentences joining a running decode), greedy and beam; bad input is a 4xx."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import torch
from conftest import ServerProcess, metric_sum
from num2words import num2words

from mmserve.checkpoints import load_model_dir
from mmserve.models.decoding import translate
from mmserve.tasks.translation import load_tokenizer

TEXTS = [num2words(n) for n in (0, 7, 42, 105, 999, 1234, 20_020, 345_678, 13, 88, 700_001, 5)]


@pytest.fixture(scope="module")
def model(tiny_translator):
    # One intra-op thread for the reference runs: on a busy 2-core machine torch's thread pool makes
    # this tiny model ~50x slower, and the server runs in its own process anyway.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model_dir(tiny_translator).model, load_tokenizer(tiny_translator)
    torch.set_num_threads(threads)


def alone(model, text: str, beam: int, max_length: int | None = None) -> tuple[str, float]:
    """The reference: one text, no batching at all."""
    stepper, tokenizer = model
    return translate(stepper, tokenizer, [text], beam_size=beam, max_length=max_length)[0]


# The server under test; tests/test_ray_translate.py runs this module's tests against the same
# server deployed on Ray Serve (overriding `server`).
SERVER_ENV = {"MMSERVE_LIMIT_MAX_TEXTS": "8", "MMSERVE_LIMIT_MAX_TEXT_CHARS": "200",
              "MMSERVE_LIMIT_MAX_BEAM_SIZE": "4", "MMSERVE_LIMIT_MAX_OUTPUT_TOKENS": "40"}


def server_args(tiny_translator) -> list[str]:
    return ["--translator", str(tiny_translator), "--backend", "torch", "--max-batch-size", "24",
            "--max-queue-delay-ms", "2", "--max-batch-tokens", "1200"]


@pytest.fixture(scope="module")
def server(tiny_translator):
    srv = ServerProcess(server_args(tiny_translator), env=SERVER_ENV)
    yield srv
    assert srv.stop(), srv.output()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c



@pytest.mark.parametrize("beam", [1, 3])
def test_matches_decoding_alone(client, model, beam: int) -> None:
    r = client.post("/translate", json={"texts": TEXTS[:8], "beam_size": beam})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-translator" and len(body["translations"]) == 8
    for text, got in zip(TEXTS[:8], body["translations"], strict=True):
        want = alone(model, text, beam)
        assert got["text"] == want[0]
        assert got["score"] == pytest.approx(want[1], abs=1e-4)


def test_defaults_come_from_the_model(client, model) -> None:
    r = client.post("/translate", json={"texts": ["forty-two"]})
    assert r.status_code == 200
    assert r.json()["translations"][0]["text"] == alone(model, "forty-two", 3)[0]  # generation.beam_size = 3
    r = client.post("/translate", json={"texts": ["forty-two"], "beam_size": 1, "max_length": 3})
    assert r.json()["translations"][0]["text"] == alone(model, "forty-two", 1, 3)[0]


def test_models_endpoint(client, tiny_translator) -> None:
    (info,) = client.get("/v1/models").json()["models"]
    loaded = load_model_dir(tiny_translator)
    assert info["task"] == "translation" and info["backend"] == "torch" and info["sha256"] == loaded.weights_sha256
    assert info["extra"]["continuous_batching"] is True and info["extra"]["max_length_limit"] == 40


@pytest.mark.slow
def test_concurrent_requests_continuous_batching(server, client, model) -> None:
    """200 concurrent requests, greedy and beam (2, 3), various max_length: every answer equals the
    text decoded alone, sentences joined running decodes, and steps ran many rows at once."""
    before = client.get("/metrics").text
    rng = np.random.default_rng(1)
    requests = []
    for _ in range(200):
        idx = rng.choice(len(TEXTS), size=int(rng.integers(1, 4)), replace=False).tolist()
        requests.append({"texts": [TEXTS[i] for i in idx], "beam_size": int(rng.choice([1, 1, 2, 3])),
                         "max_length": int(rng.choice([6, 12, 20, 30]))})

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=64)) as ac:
            return await asyncio.gather(*(ac.post("/translate", json=req) for req in requests))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * len(requests)
    cache: dict = {}
    for req, r in zip(requests, responses, strict=True):
        for text, got in zip(req["texts"], r.json()["translations"], strict=True):
            key = (text, req["beam_size"], req["max_length"])
            if key not in cache:
                cache[key] = alone(model, *key)
            assert got["text"] == cache[key][0], key
            assert got["score"] == pytest.approx(cache[key][1], abs=1e-4), key
    after = client.get("/metrics").text
    joins = metric_sum(after, "mmserve_decoder_joins_total") - metric_sum(before, "mmserve_decoder_joins_total")
    steps = metric_sum(after, "mmserve_batch_size_count") - metric_sum(before, "mmserve_batch_size_count")
    rows = metric_sum(after, "mmserve_batch_size_sum") - metric_sum(before, "mmserve_batch_size_sum")
    print(f"\n{len(cache)} distinct sentences, {steps:.0f} decoder steps, {rows / steps:.1f} rows/step, "
          f"{joins:.0f} mid-flight joins")
    assert joins > 0, "sentences should join running decodes"
    assert rows / steps > 4, "decoder steps should carry many rows"
    assert metric_sum(after, "mmserve_decoder_rows_active") == 0


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"texts": []}, 422, "invalid_request"),
        ({"texts": ["one"] * 9}, 422, "too_many_items"),
        ({"texts": ["one " * 60]}, 422, "text_too_long"),
        ({"texts": ["one"], "beam_size": 0}, 422, "invalid_request"),
        ({"texts": ["one"], "beam_size": 5}, 422, "invalid_request"),
        ({"texts": ["one"], "beam_size": "2"}, 422, "invalid_request"),
        ({"texts": ["one"], "max_length": 0}, 422, "invalid_request"),
        ({"texts": ["one"], "max_length": 41}, 422, "invalid_request"),
        ({"texts": ["one"], "max_length": 2.5}, 422, "invalid_request"),
        ({"texts": "one"}, 422, "invalid_request"),
        ({"texts": [1, 2]}, 422, "invalid_request"),
        ({"texts": [None]}, 422, "invalid_request"),
        ({"text": ["one"]}, 422, "invalid_request"),
        ({"texts": ["one"], "temperature": 0.5}, 422, "invalid_request"),
        ({"texts": ["你好"]}, 422, "invalid_text"),
        ({"texts": [""]}, 422, "invalid_text"),
        ({"texts": [" ,. "]}, 422, "invalid_text"),
        ({"texts": ["one " * 40]}, 422, "invalid_text"),  # under the character limit, over the token limit
    ],
)
def test_bad_input(client, body, status: int, code: str) -> None:
    r = client.post("/translate", json=body)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["detail"]


@pytest.mark.parametrize(
    "raw, content_type, status, code",
    [
        (b'{"texts": ["one"', "application/json", 400, "invalid_json"),
        (b'{"texts": ["\xc3\x28"]}', "application/json", 400, "invalid_utf8"),
        (b'{"texts": ["one"], "beam_size": Infinity}', "application/json", 400, "invalid_json"),
        (b'["one"]', "application/json", 422, "invalid_request"),
        (b'{"texts": ["forty-two \\ud800"]}', "application/json", 422, "invalid_text"),
        (b"texts=one", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"texts": ["one"]}', "", 415, "unsupported_media_type"),
    ],
)
def test_unreadable_bodies(client, raw: bytes, content_type: str, status: int, code: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/translate", content=raw, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


def test_classify_not_served_here_and_still_healthy(client) -> None:
    assert client.post("/classify", json={"images": ["aGk="]}).status_code == 404
    assert client.get("/readyz").status_code == 200
    assert metric_sum(client.get("/metrics").text, "mmserve_requests_total", endpoint="/translate", status="500") == 0
