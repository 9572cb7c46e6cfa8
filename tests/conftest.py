"""Shared test helpers: run the real HTTP server (uvicorn on 127.0.0.1, a free port) in a subprocess
or in a thread of the test process. Server tests use these from module-scoped fixtures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample `name` over the series of a /metrics page whose labels include `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if (line.startswith(name + "{") or line.startswith(name + " "))
               and all(f'{k}="{v}"' in line for k, v in labels.items()))


def wait_ready(base_url: str, timeout: float, proc: Optional[subprocess.Popen] = None) -> None:
    """Poll /readyz until 200; fail with the server's output if it dies or never gets ready."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{base_url}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"server at {base_url} not ready after {timeout} s: {last}")


def wait_live(base_url: str, timeout: float) -> None:
    """Poll /healthz until 200 (the process answers; models may still be loading)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server at {base_url} not live after {timeout} s")


class ServerProcess:
    """`python -m server ARGS` on a free loopback port; stopped with SIGTERM (graceful drain)."""

    def __init__(self, args: list[str], env: Optional[dict[str, str]] = None, ready_timeout: float = 90) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"mmserve-test-{self.port}.log"
        full_env = {**os.environ, **(env or {})}
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(self.url, ready_timeout, self.proc)
        except BaseException as exc:
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.output()}") from exc

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM and wait (killed after `timeout`); True when the server shut down cleanly."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.stopped_cleanly()

    def stopped_cleanly(self) -> bool:
        """uvicorn re-raises the signal after its graceful shutdown, so the exit status is -SIGTERM then, not 0."""
        return self.proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in self.output()


class ServerThread:
    """The same app under uvicorn in a thread of the test process: lets a test register a backend
    (fault injection) in-process. Stopped by asking uvicorn to exit (graceful)."""

    def __init__(self, settings: Any, ready_timeout: float = 60, wait: str = "ready") -> None:
        import uvicorn

        from server.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings.model_copy(update={"host": "127.0.0.1", "port": self.port}))
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.thread.start()
        if wait == "ready":
            wait_ready(self.url, ready_timeout)
        else:  # "live": models may still be loading (readiness tests)
            wait_live(self.url, ready_timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def make_tiny_translator(directory: Path, seed: int = 0) -> Path:
    """A small random MultiMax translator (BPE vocabulary trained on a few number words) saved as a
    model directory. The EOS embedding is scaled up so sentences end at varied lengths, which is what
    exercises rows leaving and joining a running decode."""
    import torch
    from num2words import num2words

    from mmserve.checkpoints import ModelDirConfig, save_model_dir
    from mmserve.models.seq2seq import MultiMaxTranslator, TranslatorConfig
    from mmserve.tasks.translation import (
        GenerationConfig,
        normalize_source,
        source_vocabulary,
        special_ids,
        train_tokenizer,
    )

    sources = [normalize_source(num2words(n)) for n in range(0, 3000, 7)]
    texts = sources + [num2words(n, lang="de") for n in range(0, 3000, 7)]
    tokenizer = train_tokenizer(texts, 200)
    ids = special_ids(tokenizer)
    torch.manual_seed(seed)
    vocab = tokenizer.get_vocab_size()
    arch = TranslatorConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=32, num_heads=2, encoder_layers=1,
                            decoder_layers=2, ffn_dim=64, dropout=0.0, max_positions=64, tie_embeddings="all")
    model = MultiMaxTranslator(arch)
    with torch.no_grad():
        model.decoder.embed.embed_tokens.weight[ids["eos_id"]] *= 2.0
    generation = GenerationConfig(**ids, max_source_tokens=32, max_length=24, max_length_limit=60, beam_size=3,
                                  length_penalty=0.6, source_words=source_vocabulary(sources))
    config = ModelDirConfig(name="tiny-translator", task="translation", architecture=arch.model_dump(),
                            tokenizer="tokenizer.json", generation=generation.model_dump())
    return save_model_dir(directory, model, config, side_files={"tokenizer.json": tokenizer.to_str().encode()})


@pytest.fixture(scope="session")
def numbers_export(tmp_path_factory) -> Path:
    """The bundled numbers-en-de translator exported to ONNX once per test session (the thread-policy
    and decode-lane tests both decode it on onnxruntime)."""
    numbers = REPO / "models" / "numbers-en-de"
    if not (numbers / "model.safetensors").is_file():
        pytest.skip("bundled numbers-en-de is not in this checkout (make train-bundled)")
    from exporters.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "numbers-en-de"
    export_onnx(numbers, out)
    return out


@pytest.fixture(scope="session")
def tiny_translator(tmp_path_factory) -> Path:
    return make_tiny_translator(tmp_path_factory.mktemp("models") / "tiny-translator")


@pytest.fixture(scope="session")
def ray_cluster():
    """One private Ray cluster (loopback only) for every Ray Serve test of the session; stopped,
    with every process it started, at the end."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'); dev installs it")
    from ray_support import RayCluster

    cluster = RayCluster()
    try:
        yield cluster
    finally:
        cluster.stop()
