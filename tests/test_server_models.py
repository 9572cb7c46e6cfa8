"""Many models, one server (issue 11): a model repository with the MultiMax and SoftMax digits twins,
a translator, a broken directory and a bad serving.json; per-request model choice, /v1/models states,
runtime load/unload under load, and the Open Inference Protocol through the real tritonclient.

One split-mode server (engine + frontend processes) serves most tests; the in-process server
(`--frontends 0`'s code path, in a thread so the test can record every batch) checks that batches never
mix models. Expected answers come from the models run directly, never from hard-coded scores."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from conftest import REPO, ServerProcess, ServerThread, metric_sum
from PIL import Image

from mmserve.checkpoints import load_model_dir
from mmserve.tasks.image_classification import ImagePreprocessing, decode_image, images_to_pixel_values

from server.backends import LoadOptions, register_backend, unregister_backend
from server.backends.torch_backend import load as torch_load
from server.repository import read_model_spec
from server.settings import ServerSettings

MULTIMAX, SOFTMAX = "digits-vit", "digits-vit-softmax"
DIRS = {name: REPO / "models" / name for name in (MULTIMAX, SOFTMAX)}
pytestmark = pytest.mark.skipif(not all((d / "config.json").is_file() for d in DIRS.values()),
                                reason="bundled digits models missing")
MAX_LOAD_S = 40.0  # every load loop is bounded in time and in count
MAX_REQUESTS = 3000


def _png(seed: int) -> bytes:
    """A distinct dark-ink stroke pattern per seed (different pixel values -> a different model input)."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (24, 24), 255)
    for _ in range(3):
        x, y = rng.integers(2, 18, size=2)
        image.paste(0, (int(x), int(y), int(x) + 4, int(y) + 6))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


IMAGES = [_png(seed) for seed in range(12)]


@pytest.fixture(scope="module")
def reference() -> dict[str, list[np.ndarray]]:
    """Each twin run directly on each image, one at a time: the answer the server must give."""
    out = {}
    for name, path in DIRS.items():
        loaded = load_model_dir(path)
        pre = ImagePreprocessing.model_validate(loaded.config.preprocessing)
        with torch.inference_mode():
            out[name] = [loaded.model.classify(images_to_pixel_values([decode_image(b)], pre))[0][0].numpy()
                         for b in IMAGES]
    assert not np.allclose(out[MULTIMAX][0], out[SOFTMAX][0], atol=1e-3), "the twins must disagree to be told apart"
    return out


@pytest.fixture(scope="module")
def repository(tmp_path_factory, tiny_translator):
    """A model repository: both twins (the SoftMax one with its own serving.json), a translator, a
    directory that is no model, and a model whose serving.json is invalid."""
    repo = tmp_path_factory.mktemp("repository")
    (repo / MULTIMAX).symlink_to(DIRS[MULTIMAX])
    shutil.copytree(DIRS[SOFTMAX], repo / SOFTMAX)
    (repo / SOFTMAX / "serving.json").write_text(json.dumps({"max_batch_size": 4, "max_queue_delay_ms": 1}))
    (repo / "translator").symlink_to(tiny_translator)
    (repo / "broken").mkdir()
    (repo / "broken" / "config.json").write_text("{not json")
    bad = repo / "bad-serving"
    shutil.copytree(DIRS[MULTIMAX], bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "name": "bad-serving"}))
    (bad / "serving.json").write_text(json.dumps({"max_batch_size": 0, "colour": "blue"}))
    duplicate = repo / "zz-duplicate"  # a second directory claiming a served model's name
    duplicate.symlink_to(DIRS[MULTIMAX])
    return repo


@pytest.fixture(scope="module")
def server(repository):
    srv = ServerProcess(["--model-repository", str(repository), "--backend", "torch", "--frontends", "1",
                         "--default-classifier", SOFTMAX, "--max-queue-delay-ms", "5"], ready_timeout=240)
    yield srv
    assert srv.stop(), srv.output()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _scores(prediction: dict, labels: list[str]) -> np.ndarray:
    by_label = {e["label"]: e["score"] for e in prediction["top_k"]}
    return np.array([by_label[label] for label in labels], dtype=np.float32)


def test_repository_models_and_states(client) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models[MULTIMAX]["state"] == models[SOFTMAX]["state"] == models["tiny-translator"]["state"] == "ready"
    assert models[SOFTMAX]["default"] and not models[MULTIMAX]["default"] and models["tiny-translator"]["default"]
    assert models[SOFTMAX]["max_batch_size"] == 4 and models[SOFTMAX]["max_queue_delay_ms"] == 1.0  # serving.json
    assert models[MULTIMAX]["max_batch_size"] == 32  # the server default
    assert models["broken"]["state"] == "failed" and "not valid JSON" in models["broken"]["reason"]
    bad = models["bad-serving"]
    assert bad["state"] == "failed" and "serving.json" in bad["reason"] and "max_batch_size" in bad["reason"] \
        and "colour" in bad["reason"]
    duplicate = next(m for m in models.values() if m["source"].endswith("zz-duplicate"))
    assert duplicate["state"] == "failed" and "already served from" in duplicate["reason"]
    assert models[MULTIMAX]["source"].endswith(MULTIMAX)
    assert client.get("/readyz").status_code == 200  # a broken directory in the repository does not stop the rest


def test_each_request_answered_by_the_model_it_names(server, reference) -> None:
    """Concurrent requests alternate between the twins, in every way a request can name a model."""
    labels = {m["name"]: m.get("labels") for m in httpx.get(f"{server.url}/v1/models").json()["models"]}

    async def one(ac: httpx.AsyncClient, i: int) -> tuple[str, int, dict]:
        name, image, how = (MULTIMAX, SOFTMAX)[i % 2], i % len(IMAGES), (i // 2) % 3
        if how == 0:
            r = await ac.post("/classify", files={"files": IMAGES[image]}, data={"top_k": "10", "model": name})
        elif how == 1:
            import base64

            r = await ac.post("/classify", json={"images": [base64.b64encode(IMAGES[image]).decode()], "top_k": 10,
                                                 "model": name})
        else:
            r = await ac.post(f"/classify?top_k=10&model={name}", content=IMAGES[image],
                              headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        return name, image, r.json()

    async def main() -> list:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as ac:
            return await asyncio.gather(*(one(ac, i) for i in range(48)))

    for name, image, body in asyncio.run(main()):
        assert body["model"] == name
        np.testing.assert_allclose(_scores(body["predictions"][0], labels[name]), reference[name][image], atol=2e-5)
    r = httpx.post(f"{server.url}/classify", files={"files": IMAGES[0]}, data={"top_k": "10"})
    assert r.json()["model"] == SOFTMAX  # --default-classifier


def test_unknown_names_and_wrong_tasks(client) -> None:
    r = client.post("/classify", files={"files": IMAGES[0]}, data={"model": "no-such-model"})
    assert r.status_code == 404 and r.json()["code"] == "unknown_model"
    assert MULTIMAX in r.json()["detail"] and SOFTMAX in r.json()["detail"] and "tiny-translator" not in r.json()["detail"]
    r = client.post("/classify?model=tiny-translator", content=IMAGES[0], headers={"Content-Type": "image/png"})
    assert r.status_code == 422 and r.json()["code"] == "wrong_task" and MULTIMAX in r.json()["detail"]
    r = client.post("/translate", json={"texts": ["forty-two"], "model": MULTIMAX})
    assert r.status_code == 422 and r.json()["code"] == "wrong_task" and "tiny-translator" in r.json()["detail"]
    r = client.post("/translate", json={"texts": ["forty-two"], "model": "tiny-translator"})
    assert r.status_code == 200 and r.json()["model"] == "tiny-translator"
    r = client.post("/classify", files={"files": IMAGES[0]}, data={"model": "broken"})
    assert r.status_code == 503 and "failed to load" in r.json()["detail"] and "not valid JSON" in r.json()["detail"]
    assert client.post("/v1/models/no-such-model/load").status_code == 404
    assert client.post("/v1/models/no-such-model/unload").status_code == 404


def test_broken_model_load_is_reported_and_others_serve(client) -> None:
    r = client.post("/v1/models/broken/load")
    assert r.status_code == 422 and r.json()["code"] == "load_failed" and "not valid JSON" in r.json()["detail"]
    r = client.post("/classify", files={"files": IMAGES[0]}, data={"model": MULTIMAX})
    assert r.status_code == 200


def test_unload_and_load_under_load(server, client) -> None:
    """Clients keep calling both twins while the SoftMax one is unloaded and loaded again: every
    request gets an answer (200, or 503 naming the model's state), the other twin never fails."""
    outcomes: list = []
    deadline = [time.monotonic() + MAX_LOAD_S]  # brought forward once the model is back
    events: list = []

    async def caller(ac: httpx.AsyncClient, n: int) -> None:
        i = n
        while time.monotonic() < deadline[0] and len(outcomes) < MAX_REQUESTS:
            i += 1
            name = (MULTIMAX, SOFTMAX)[i % 2]
            r = await ac.post("/classify", files={"files": IMAGES[i % len(IMAGES)]}, data={"model": name})
            outcomes.append((time.monotonic(), name, r.status_code, r.json().get("code")))

    async def operator(ac: httpx.AsyncClient) -> None:
        await asyncio.sleep(1.0)
        r = await ac.post(f"/v1/models/{SOFTMAX}/unload")
        events.append(("unloaded", time.monotonic(), r.status_code, r.json()))
        await asyncio.sleep(1.0)
        r = await ac.post(f"/v1/models/{SOFTMAX}/load")
        events.append(("loaded", time.monotonic(), r.status_code, r.json()))
        deadline[0] = min(deadline[0], time.monotonic() + 1.5)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as ac:
            await asyncio.gather(operator(ac), *(caller(ac, n) for n in range(8)))

    asyncio.run(main())
    (_, t_unloaded, s1, body1), (_, t_loaded, s2, body2) = events
    assert (s1, body1["state"]) == (200, "unloaded") and (s2, body2["state"]) == (200, "ready"), events
    assert all(status == 200 for _, name, status, _ in outcomes if name == MULTIMAX)
    soft = [(t, status, code) for t, name, status, code in outcomes if name == SOFTMAX]
    assert {(status, code) for _, status, code in soft} <= {(200, None), (503, "model_unavailable"),
                                                            (503, "shutting_down"), (503, "not_ready")}, soft
    assert any(status == 503 for t, status, _ in soft if t_unloaded < t < t_loaded - 0.5)  # refused while unloaded
    assert any(status == 200 for t, status, _ in soft if t > t_loaded)  # and served again after the load
    assert client.get("/readyz").status_code == 200


# ------------------------------------------------------------------ Open Inference Protocol (KServe v2)



def _text(value) -> str:
    """A BYTES element as tritonclient gives it (bytes from binary outputs, str from JSON ones)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def test_v2_with_tritonclient(server, client) -> None:
    tritonclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]' (dev extra)")
    from tritonclient.utils import InferenceServerException

    tc = tritonclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert tc.is_server_live() and tc.is_server_ready() and tc.get_server_metadata()["name"] == "mmserve"
    meta = tc.get_model_metadata(MULTIMAX)
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    labels = next(m["labels"] for m in client.get("/v1/models").json()["models"] if m["name"] == MULTIMAX)
    assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]}
    assert tc.is_model_ready(SOFTMAX) and not tc.is_model_ready("broken")

    pre = ImagePreprocessing.model_validate(load_model_dir(DIRS[MULTIMAX]).config.preprocessing)
    pixels = images_to_pixel_values([decode_image(b) for b in IMAGES[:3]], pre).numpy()
    items_before = metric_sum(client.get("/metrics").text, "mmserve_items_total", model=MULTIMAX)
    for binary in (True, False):
        tensor = tritonclient.InferInput("pixel_values", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels, binary_data=binary)
        result = tc.infer(MULTIMAX, [tensor])
        probs, top = result.as_numpy("probabilities"), result.as_numpy("label")
        assert probs.shape == (3, len(labels))
        for i in range(3):
            r = client.post("/classify", files={"files": IMAGES[i]}, data={"top_k": str(len(labels)), "model": MULTIMAX})
            prediction = r.json()["predictions"][0]
            np.testing.assert_allclose(probs[i], _scores(prediction, labels), atol=1e-6)
            label = top[i].decode() if isinstance(top[i], bytes) else str(top[i])
            assert label == prediction["label"]

    # the same batcher and metrics as /classify: 2 x 3 tensor rows + 2 x 3 /classify images
    assert metric_sum(client.get("/metrics").text, "mmserve_items_total", model=MULTIMAX) - items_before == 12
    assert metric_sum(client.get("/metrics").text, "mmserve_requests_total", endpoint="/v2/models/{name}/infer") >= 2

    text = tritonclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"forty-two"], dtype=object))
    result = tc.infer("tiny-translator", [text])
    expected = client.post("/translate", json={"texts": ["forty-two"], "model": "tiny-translator"}).json()
    assert _text(result.as_numpy("translation")[0]) == expected["translations"][0]["text"]

    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        tc.infer("nope", [tensor])
    wrong = tritonclient.InferInput("pixel_values", [1, 1, 4, 4], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape must be \[N, 1, 8, 8\]"):
        tc.infer(MULTIMAX, [wrong])


def test_v2_json_errors_are_4xx(client) -> None:
    url = f"/v2/models/{MULTIMAX}/infer"
    for body, status in ((b"{", 400), (b'{"inputs": []}', 422),
                         (json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                                  "data": [0.0] * 63}]}).encode(), 422),
                         (json.dumps({"inputs": [{"name": "pixel_values", "shape": [100, 1, 8, 8],
                                                  "datatype": "FP32", "data": [0.0] * 6400}]}).encode(), 422),
                         (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                  "data": [1.0]}]}).encode(), 422)):
        r = client.post(url, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status and r.json()["error"], (body[:80], r.text)
    r = client.post(url, content=b'{"inputs": []}', headers={"Inference-Header-Content-Length": "999"})
    assert r.status_code == 400 and "outside the body" in r.json()["error"]


# ------------------------------------------------------------------ in-process server (--frontends 0)


def test_in_process_batches_never_mix_models(reference) -> None:
    """Both twins behind a recording backend: every batch either model ran held only rows that were
    sent to that model, several batches held more than one row, and every answer is its model's."""
    batches: list[tuple[str, list[bytes]]] = []
    lock = threading.Lock()

    def loader(path, task, options: LoadOptions):
        inner = torch_load(path, task, options)
        run = inner.run

        def recording_run(pixel_values, explain=False):
            with lock:
                batches.append((inner.name, [row.tobytes() for row in pixel_values]))
            time.sleep(0.01)  # lets requests pile up into batches
            return run(pixel_values, explain)

        inner.run = recording_run
        return inner

    register_backend("recording", loader, replace=True)
    srv = ServerThread(ServerSettings(models=list(DIRS.values()), backend="recording", max_queue_delay_ms=10,
                                      warmup=False))
    try:
        sent: dict[str, set[bytes]] = {MULTIMAX: set(), SOFTMAX: set()}
        pre = ImagePreprocessing.model_validate(load_model_dir(DIRS[MULTIMAX]).config.preprocessing)
        rows = [images_to_pixel_values([decode_image(b)], pre).numpy()[0].tobytes() for b in IMAGES]
        labels = {m["name"]: m.get("labels") for m in httpx.get(f"{srv.url}/v1/models").json()["models"]}

        async def one(ac: httpx.AsyncClient, i: int) -> None:
            name = MULTIMAX if i % len(IMAGES) < len(IMAGES) // 2 else SOFTMAX  # each image goes to one model
            sent[name].add(rows[i % len(IMAGES)])
            r = await ac.post("/classify", files={"files": IMAGES[i % len(IMAGES)]}, data={"model": name, "top_k": "10"})
            assert r.status_code == 200 and r.json()["model"] == name
            np.testing.assert_allclose(_scores(r.json()["predictions"][0], labels[name]),
                                       reference[name][i % len(IMAGES)], atol=2e-5)

        async def main() -> None:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as ac:
                await asyncio.gather(*(one(ac, i) for i in range(60)))

        asyncio.run(main())
        assert batches and sum(len(b) for _, b in batches) == 60
        for name, batch in batches:
            assert set(batch) <= sent[name], f"a {name} batch held a row sent to the other model"
        assert any(len(b) > 1 for _, b in batches), "no batching happened: the check above proved nothing"
        # load/unload in this mode too
        assert httpx.post(f"{srv.url}/v1/models/{MULTIMAX}/unload").json()["state"] == "unloaded"
        r = httpx.post(f"{srv.url}/classify", files={"files": IMAGES[0]}, data={"model": MULTIMAX})
        assert r.status_code == 503 and r.json()["code"] == "model_unavailable"
        assert httpx.post(f"{srv.url}/v1/models/{MULTIMAX}/load", timeout=60).json()["state"] == "ready"
        assert httpx.post(f"{srv.url}/classify", files={"files": IMAGES[0]}, data={"model": MULTIMAX}).status_code == 200
    finally:
        srv.stop()
        unregister_backend("recording")


def test_unknown_default_model_fails_the_start() -> None:
    srv = ServerThread(ServerSettings(models=[DIRS[MULTIMAX]], backend="torch", warmup=False,
                                      default_classifier="digits-vit-typo"), wait="live")
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{srv.url}/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.get(f"{srv.url}/readyz")
        assert r.status_code == 503 and "'digits-vit-typo' is not served" in r.json()["error"]
    finally:
        srv.stop()


# ------------------------------------------------------------------ settings and CLI


def test_serving_json_validation(tmp_path) -> None:
    model = tmp_path / "m"
    shutil.copytree(DIRS[MULTIMAX], model)
    assert read_model_spec(model).error is None and read_model_spec(model).task == "image-classification"
    (model / "serving.json").write_text('{"max_batch_size": 8, "backend": "onnxruntime", "device": "cpu"}')
    spec = read_model_spec(model)
    assert spec.error is None and spec.serving.max_batch_size == 8 and spec.serving.backend == "onnxruntime"
    (model / "serving.json").write_text('{"device": "tpu"}')
    assert "device" in read_model_spec(model).error and "serving.json" in read_model_spec(model).error
    assert "not a directory" in read_model_spec(tmp_path / "missing").error
    (tmp_path / "empty").mkdir()
    assert "config.json" in read_model_spec(tmp_path / "empty").error


def test_cli_checks_model_paths(tmp_path) -> None:
    from mmserve.cli.serve_cmd import build_settings
    from mmserve.errors import UserError

    with pytest.raises(UserError, match="model repository does not exist"):
        build_settings(model_repository=tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a model or export directory"):
        build_settings(models=[tmp_path])
    bundled = build_settings()
    assert [p.name for p in bundled.models] == [SOFTMAX] and bundled.classifier.name == MULTIMAX
