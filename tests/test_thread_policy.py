"""The thread policy (`exporters.onnx.runtime.thread_policy`): onnxruntime without spinning when it has
more than one thread, torch's decoding glue on one thread. Without it, decoding the bundled translator
on 2 threads was measured 5-10x SLOWER than on 1 (torch's OpenMP workers and onnxruntime's spinning
intra-op workers fighting over 2 cores); the speed test fails if 2 threads fall below 0.8x of 1."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
import torch

from exporters.onnx.runtime import (OnnxSeq2SeqStepper, RuntimeOptions, _session_options, apply_thread_policy,
                                    thread_policy)
from mmserve.checkpoints import read_config
from mmserve.data.numbers import heldout_texts
from mmserve.models.decoding import translate
from mmserve.tasks.translation import load_tokenizer

NUMBERS = Path(__file__).resolve().parents[1] / "models" / "numbers-en-de"


def test_policy_splits_threads_between_runtimes() -> None:
    ort2 = thread_policy("onnxruntime", 2, workers=1)  # one worker: both threads inside onnxruntime
    assert (ort2.intra_op_threads, ort2.torch_threads, ort2.allow_spinning) == (2, 1, False)
    lanes = thread_policy("onnxruntime", 2)  # the default: two workers of one thread each
    assert (lanes.workers, lanes.intra_op_threads, lanes.torch_threads) == (2, 1, 1)
    assert thread_policy("onnxruntime", 4, workers=2).intra_op_threads == 2
    assert thread_policy("torch", 2).workers == 1
    assert thread_policy("onnxruntime", 1).allow_spinning  # no worker threads to spin: keep the default
    assert thread_policy("onnxruntime", 0).torch_threads == 1  # onnxruntime's default pool: still no spin
    assert not thread_policy("onnxruntime", 0).allow_spinning
    assert thread_policy("torch", 2).torch_threads == 2


def test_session_options_follow_the_policy_and_explicit_entries_win() -> None:
    spin = "session.intra_op.allow_spinning"
    assert _session_options(RuntimeOptions(intra_op_threads=2)).get_session_config_entry(spin) == "0"
    assert _session_options(RuntimeOptions(intra_op_threads=1)).get_session_config_entry(spin) == "1"
    assert _session_options(RuntimeOptions(intra_op_threads=2, allow_spinning=True)).get_session_config_entry(spin) == "1"
    explicit = RuntimeOptions(intra_op_threads=2, extra_session_config={spin: "1"})
    assert _session_options(explicit).get_session_config_entry(spin) == "1"


def test_two_threads_are_not_slower_than_one(numbers_export: Path) -> None:
    """Robust to a shared machine: each round times 1 and 2 threads back to back (alternating which
    goes first) and the test takes the median of the per-round ratios, so load that comes and goes
    slows both sides of a ratio alike. The failure this guards against is 5-10x, not 20 %.

    Beam 4 over batches of 32 sentences, i.e. 128 decoder rows per step: on this tiny model greedy
    batches of 32 rows give each op too little work for a second intra-op thread to pay (measured
    0.71-1.05x, median 0.78x, on an otherwise idle 2-core machine; 128 rows: 0.89-1.14x), so a greedy
    test would measure onnxruntime's thread overhead, not the fight this policy ends (without the
    policy beam 4 on 2 threads ran at 0.34x of 1 thread, greedy at 0.07-0.2x)."""
    texts = [src for src, _ in heldout_texts(read_config(NUMBERS), 96)]
    tokenizer = load_tokenizer(numbers_export)
    steppers = {n: OnnxSeq2SeqStepper(numbers_export, RuntimeOptions(intra_op_threads=n)) for n in (1, 2)}
    previous = torch.get_num_threads()
    ratios: list[float] = []
    outputs: dict[int, list] = {}
    try:
        for round_ in range(11):  # round 0 warms up (sessions open lazily) and is not counted
            seconds = {}
            for n in ((1, 2) if round_ % 2 else (2, 1)):
                apply_thread_policy("onnxruntime", n)
                start = time.perf_counter()
                outputs[n] = translate(steppers[n], tokenizer, texts, beam_size=4, batch_size=32)
                seconds[n] = time.perf_counter() - start
            if round_:
                ratios.append(seconds[1] / seconds[2])  # 2-thread speed / 1-thread speed
    finally:
        torch.set_num_threads(previous)
    assert outputs[1] == outputs[2]
    ratio = statistics.median(ratios)
    assert ratio >= 0.8, f"2 threads run at {ratio:.2f}x the speed of 1 thread (per round: {ratios})"


def test_two_decode_workers_are_not_slower_than_one_thread(numbers_export: Path) -> None:
    """The policy's default for 2 threads: two batches decoded at once, one intra-op thread each
    (`mmserve translate --threads 2`). Same method as above (paired, alternating rounds, median), and
    the same kind of bound: it catches workers that fight or serialise badly (e.g. spinning sessions, a
    lock held across `run`), not a missed speed-up; the speed-up itself is measured by
    benchmarks/bench_translate.py (1.7-1.8x on an idle 2-core machine). 4 batches of 32, greedy."""
    from mmserve.tasks.batch_translation import translate_lines

    texts = [src for src, _ in heldout_texts(read_config(NUMBERS), 128)]
    tokenizer = load_tokenizer(numbers_export)
    policy = thread_policy("onnxruntime", 2)
    assert (policy.workers, policy.intra_op_threads) == (2, 1)
    stepper = OnnxSeq2SeqStepper(numbers_export, RuntimeOptions(intra_op_threads=policy.intra_op_threads))
    previous = torch.get_num_threads()
    ratios: list[float] = []
    outputs: dict[int, list[str]] = {}
    try:
        for round_ in range(9):  # round 0 warms up and is not counted
            seconds = {}
            for workers in ((1, 2) if round_ % 2 else (2, 1)):
                apply_thread_policy("onnxruntime", workers)
                start = time.perf_counter()
                outputs[workers] = translate_lines(stepper, tokenizer, texts, beam_size=1, batch_size=32,
                                                   workers=workers).outputs
                seconds[workers] = time.perf_counter() - start
            if round_:
                ratios.append(seconds[1] / seconds[2])
    finally:
        torch.set_num_threads(previous)
    assert outputs[1] == outputs[2]
    ratio = statistics.median(ratios)
    assert ratio >= 0.8, f"2 workers run at {ratio:.2f}x the speed of 1 thread (per round: {ratios})"
