"""Decode lanes: the continuous batcher with `lanes` > 1 runs that many worker threads, each with its own
running batch, over one shared queue and one stepper (server/continuous.py). Two lanes must answer
exactly what one lane answers (held-out sentences of the bundled translator on onnxruntime, submitted
concurrently, greedy and beam), both lanes must really decode, every request is answered exactly once
(drained or refused at stop), a fault in one lane fails that lane's sentences only, and the server's
settings and CLI give a translator N lanes x 1 intra-op thread for --threads N on onnxruntime."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from exporters.onnx.runtime import OnnxSeq2SeqStepper, RuntimeOptions
from mmserve.checkpoints import read_config
from mmserve.data.numbers import heldout_texts
from mmserve.models.decoding import search_rules
from mmserve.tasks.translation import encode_sources, load_tokenizer
from server.backends import LoadOptions, load_backend
from server.batching import BatchPolicy
from server.continuous import ContinuousBatcher, TranslationJob
from server.errors import BackendFault, ShuttingDown
from server.metrics import Metrics
from server.repository import ModelSpec
from stepper_support import DelegatingStepper
from server.settings import ServerSettings
from server.state import ServerState

NUMBERS = Path(__file__).resolve().parents[1] / "models" / "numbers-en-de"


class ThreadRecorder(DelegatingStepper):
    """Wraps a stepper: records which thread ran each decode_step and with how many rows; an optional
    delay per step; an optional fault on the Nth decode_step of one named thread."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        super().__init__(inner, delay)
        self.calls: list[tuple[str, int]] = []  # (thread name, rows) per decode_step
        self.fail_thread: str | None = None
        self.fail_at = 0
        self.failed_rows: int | None = None  # rows of the batch the fault hit
        self._per_thread: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def decode_step(self, tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask):
        name = threading.current_thread().name
        with self._lock:
            self._per_thread[name] += 1
            nth = self._per_thread[name]
            self.calls.append((name, tokens.shape[0]))
        if name == self.fail_thread and nth == self.fail_at:
            self.failed_rows = tokens.shape[0]
            raise RuntimeError("injected decode fault")
        return super().decode_step(tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask)

    def threads(self) -> set[str]:
        return {name for name, _ in self.calls}


@pytest.fixture(scope="module")
def onnx_model(numbers_export):
    """The bundled translator on onnxruntime, one intra-op thread per session (as a lane gets it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the decoding glue, as the thread policy sets it next to onnxruntime
    stepper = OnnxSeq2SeqStepper(numbers_export, RuntimeOptions(intra_op_threads=1))
    yield stepper, load_tokenizer(numbers_export)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_translator):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_backend("torch", tiny_translator, "translation", LoadOptions())
    torch.set_num_threads(threads)


def _batcher(stepper, tokenizer, lanes: int, max_rows: int = 32, tokens: int = 8192, metrics=None,
             delay_ms: float = 2.0) -> ContinuousBatcher:
    g = tokenizer.generation
    return ContinuousBatcher("m", stepper, g.bos_id, g.eos_id, g.pad_id, g.length_penalty,
                             BatchPolicy(max_batch_size=max_rows, max_queue_delay_s=delay_ms / 1000), tokens,
                             metrics=metrics, rules=search_rules(g), lanes=lanes)


def _jobs(tokenizer, texts: list[str], beam: int, max_length: int = 40) -> list[TranslationJob]:
    return [TranslationJob(tuple(ids), beam, max_length) for ids in encode_sources(tokenizer, texts, 128)]


def _count_deliveries(batcher: ContinuousBatcher) -> collections.Counter:
    """Count what the batcher hands to each future (a duplicate answer would be silently dropped by
    the event loop, so it is counted at the source)."""
    counts: collections.Counter = collections.Counter()
    deliver = batcher._deliver

    def counting(outcomes):
        for future, _, _ in outcomes:
            counts[id(future)] += 1
        deliver(outcomes)

    batcher._deliver = counting
    return counts


def _run_requests(batcher: ContinuousBatcher, requests: list[list[TranslationJob]]) -> list:
    """Submit every request at once (each its own task) and gather the answers (exceptions included)."""

    async def run():
        batcher.start()
        submits = (batcher.submit(jobs, request_id=f"r{i}") for i, jobs in enumerate(requests))
        return await asyncio.gather(*submits, return_exceptions=True)

    return asyncio.run(run())


@pytest.mark.parametrize("beam", [1, 3])
def test_two_lanes_answer_what_one_lane_answers(onnx_model, beam: int) -> None:
    """Held-out sentences in requests of 1-5, all submitted at once: the 2-lane batcher's tokens equal
    the 1-lane batcher's, both lanes decoded, each lane kept the row budget, and the rows gauge is
    back to 0 with every sentence counted once."""
    stepper, tokenizer = onnx_model
    texts = [src for src, _ in heldout_texts(read_config(NUMBERS), 300 if beam == 1 else 120)]
    jobs = _jobs(tokenizer, texts, beam)
    sizes = [1 + i % 5 for i in range(len(jobs))]
    requests, start = [], 0
    for size in sizes:
        if start >= len(jobs):
            break
        requests.append(jobs[start: start + size])
        start += size
    answers = {}
    for lanes in (1, 2):
        recorder = ThreadRecorder(stepper)
        metrics = Metrics()
        batcher = _batcher(recorder, tokenizer, lanes, max_rows=24, metrics=metrics)
        deliveries = _count_deliveries(batcher)
        results = _run_requests(batcher, requests)
        batcher.stop()
        assert not any(isinstance(r, BaseException) for r in results), results
        answers[lanes] = [pair for result in results for pair in result]
        assert sorted(deliveries.values()) == [1] * len(jobs)  # every sentence answered exactly once
        assert max(rows for _, rows in recorder.calls) <= 24  # the row budget holds per lane
        assert len(recorder.threads()) == lanes, recorder.threads()
        assert batcher.rows == 0 and not batcher.running
        page = metrics.render().decode()
        assert 'mmserve_decoder_rows_active{model="m"} 0.0' in page
        assert f'mmserve_items_total{{model="m",outcome="ok"}} {float(len(jobs))}' in page
        if lanes == 2:
            per_lane = collections.Counter(name for name, _ in recorder.calls)
            assert min(per_lane.values()) > 0.2 * sum(per_lane.values()), per_lane  # both did real work
    assert len(answers[2]) == len(answers[1]) == len(jobs)
    for text, (tokens_1, score_1), (tokens_2, score_2) in zip(texts, answers[1], answers[2], strict=True):
        assert tokens_2 == tokens_1, text
        assert score_2 == pytest.approx(score_1, abs=1e-4), text


def test_rows_gauge_sums_the_lanes_while_they_run(tiny) -> None:
    """Mid-decode the rows gauge is the sum of both lanes' rows, not the last lane to write it."""
    recorder = ThreadRecorder(tiny.stepper, delay=0.004)
    metrics = Metrics()
    batcher = _batcher(recorder, tiny.tokenizer, lanes=2, max_rows=4, metrics=metrics)
    jobs = _jobs(tiny.tokenizer, ["seven"] * 8, 1, max_length=40)  # "seven" runs to max_length (random model)
    seen: list[tuple[int, float]] = []

    def gauge() -> float:
        page = metrics.render().decode()
        return float(page.split('mmserve_decoder_rows_active{model="m"} ')[1].split()[0])

    async def run():
        batcher.start()
        task = asyncio.gather(*(batcher.submit([job]) for job in jobs))
        deadline = time.monotonic() + 10
        while batcher.rows < 8 and time.monotonic() < deadline:  # both lanes full (4 rows each)
            await asyncio.sleep(0.002)
        seen.append((batcher.rows, gauge()))  # both sentences run 40 steps x 4 ms: still running here
        return await task

    results = asyncio.run(run())
    batcher.stop()
    assert all(len(tokens) == 40 for [(tokens, _)] in results)
    assert seen == [(8, 8.0)], seen
    assert [lane.reported_rows for lane in batcher.lanes] == [0, 0]


def test_stop_drain_answers_every_queued_request_in_both_lanes(tiny) -> None:
    recorder = ThreadRecorder(tiny.stepper, delay=0.002)
    batcher = _batcher(recorder, tiny.tokenizer, lanes=2, max_rows=6)
    deliveries = _count_deliveries(batcher)
    texts = ["forty-two", "seven", "one hundred and five", "nine", "thirteen", "twenty thousand and twenty"]
    requests = [_jobs(tiny.tokenizer, [texts[i % 6], texts[(i + 1) % 6]], 1 + i % 2, 30) for i in range(40)]

    async def run():
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(jobs)) for jobs in requests]
        await asyncio.sleep(0.02)  # most of it still queued: 80 sentences, 12 rows decoding at a time
        assert batcher.depth > 20
        await asyncio.to_thread(batcher.stop, True, 60)
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert not any(isinstance(r, BaseException) for r in results), results
    assert [len(r) for r in results] == [2] * 40
    assert sorted(deliveries.values()) == [1] * 80
    assert len(recorder.threads()) == 2 and not batcher.running and batcher.rows == 0


def test_stop_without_drain_refuses_the_queue_and_finishes_both_lanes(tiny) -> None:
    recorder = ThreadRecorder(tiny.stepper, delay=0.003)
    batcher = _batcher(recorder, tiny.tokenizer, lanes=2, max_rows=3)
    deliveries = _count_deliveries(batcher)
    requests = [_jobs(tiny.tokenizer, ["seven"], 1, 30) for _ in range(30)]

    async def run():
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(jobs)) for jobs in requests]
        await asyncio.sleep(0.03)
        await asyncio.to_thread(batcher.stop, False, 60)
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, ShuttingDown)]
    assert len(done) + len(refused) == 30 and refused
    assert len(done) >= 6  # both lanes' running batches (3 rows each) finished
    assert sorted(deliveries.values()) == [1] * 30
    assert not batcher.running and batcher.rows == 0


def test_decode_fault_in_one_lane_fails_its_sentences_only(tiny) -> None:
    """Lane 1's third step raises: exactly the sentences in lane 1's batch fail; lane 0 carries on, and
    lane 1 itself takes the queue again afterwards."""
    recorder = ThreadRecorder(tiny.stepper, delay=0.003)
    recorder.fail_thread, recorder.fail_at = "batcher-m-1", 3
    batcher = _batcher(recorder, tiny.tokenizer, lanes=2, max_rows=4)
    deliveries = _count_deliveries(batcher)
    requests = [_jobs(tiny.tokenizer, ["seven"], 1, 20) for _ in range(24)]
    results = _run_requests(batcher, requests)
    batcher.stop()
    failed = [r for r in results if isinstance(r, BackendFault)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert recorder.failed_rows is not None and len(failed) == recorder.failed_rows
    assert len(ok) + len(failed) == 24 and len(ok) >= 16
    want = ok[0][0]
    assert all(r[0] == want for r in ok)  # every survivor decoded as usual
    lane1_after = [i for i, (name, _) in enumerate(recorder.calls) if name == "batcher-m-1"]
    assert len(lane1_after) > 3  # lane 1 decoded again after its fault
    assert sorted(deliveries.values()) == [1] * 24


def test_retry_after_counts_the_lanes(tiny) -> None:
    g = tiny.tokenizer.generation
    one, two = (ContinuousBatcher("m", tiny.stepper, g.bos_id, g.eos_id, g.pad_id, g.length_penalty,
                                  BatchPolicy(max_batch_size=8), 4096, lanes=n) for n in (1, 2))
    for b in (one, two):
        b._avg_batch_s = 0.05
    assert one.retry_after(64) == 2 * two.retry_after(64) == 16
    with pytest.raises(ValueError):
        ContinuousBatcher("m", tiny.stepper, 0, 1, 2, 1.0, BatchPolicy(), 4096, lanes=0)


# ---------------------------------------------------------------------------------- wiring


def _settings(tmp_path: Path, **kw) -> ServerSettings:
    return ServerSettings(translator=tmp_path, **kw)


def test_translator_threads_follow_the_policy(tmp_path) -> None:
    def split(**kw):
        t = _settings(tmp_path, **kw).translator_threads()
        return t.workers, t.intra_op_threads

    assert split(backend="onnxruntime", intra_op_threads=2) == (2, 1)  # 2 lanes x 1 thread
    assert split(backend="onnxruntime", intra_op_threads=2, decode_lanes=1) == (1, 2)  # the old loop
    assert split(backend="onnxruntime", intra_op_threads=1) == (1, 1)
    assert split(backend="onnxruntime", intra_op_threads=4, decode_lanes=2) == (2, 2)
    assert split(backend="torch", intra_op_threads=2) == (1, 2)  # torch runs the model: one lane
    assert split(backend="tensorrt", intra_op_threads=2) == (1, 2)  # other steppers: one lane unless asked
    assert split(backend="torch", intra_op_threads=2, decode_lanes=2) == (2, 1)


def test_load_options_give_a_translator_one_lanes_threads(tmp_path) -> None:
    state = ServerState(_settings(tmp_path, backend="onnxruntime", intra_op_threads=2))
    translator = ModelSpec("t", tmp_path, "translation")
    classifier = ModelSpec("c", tmp_path, "image-classification")
    assert state.options(translator).intra_op_threads == 1  # 2 lanes x 1 thread: no oversubscription
    assert state.options(classifier).intra_op_threads == 2  # one worker thread: every thread
    single = ServerState(_settings(tmp_path, backend="onnxruntime", intra_op_threads=2, decode_lanes=1))
    assert single.options(translator).intra_op_threads == 2


def test_served_translator_on_onnxruntime_gets_lanes_and_one_thread_sessions(tiny_translator, tmp_path) -> None:
    """The whole load path of the server (ServerState._load_model: export into the cache, sessions,
    batcher): --threads 2 -> 2 lanes, sessions of 1 intra-op thread, reported in /v1/models' extra."""
    threads = torch.get_num_threads()
    try:
        for lanes, want in ((None, (2, 1)), (1, (1, 2))):
            settings = ServerSettings(translator=tiny_translator, backend="onnxruntime", intra_op_threads=2,
                                      decode_lanes=lanes, onnx_cache_dir=tmp_path / "cache", warmup=True)
            state = ServerState(settings)
            served = state._load_model(state.specs()[0])
            try:
                session = served.backend.stepper.session("decoder.onnx")
                got = (len(served.batcher.lanes), session.get_session_options().intra_op_num_threads)
                assert got == want
                extra = state._describe(served)["extra"]
                assert (extra["decode_lanes"], extra["intra_op_threads_per_lane"]) == want
            finally:
                served.backend.close()
    finally:
        torch.set_num_threads(threads)


def test_cli_and_environment_set_decode_lanes(tiny_translator, monkeypatch) -> None:
    from mmserve.cli import app, serve_cmd

    captured = []
    monkeypatch.setattr(serve_cmd, "run_server", captured.append)
    base = ["serve", "--translator", str(tiny_translator), "--threads", "2"]
    for extra, want in (([], (2, 1)), (["--decode-lanes", "1"], (1, 2))):
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 0, result.output
        settings = captured[-1]
        t = settings.translator_threads()
        assert (settings.decode_lanes, (t.workers, t.intra_op_threads)) == (1 if extra else None, want)
    monkeypatch.setenv("MMSERVE_DECODE_LANES", "1")
    assert CliRunner().invoke(app, base).exit_code == 0
    assert captured[-1].decode_lanes == 1
    assert CliRunner().invoke(app, base + ["--decode-lanes", "0"]).exit_code != 0
