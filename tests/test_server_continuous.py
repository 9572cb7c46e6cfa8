"""The translator's continuous batcher in-process (no HTTP): sentences that join a running decode at
different steps, greedy and beam, decode exactly as `mmserve.models.decoding.translate` decodes each of
them alone; the cache is trimmed as rows leave; faults and cancellations stay contained."""

from __future__ import annotations

import asyncio

import pytest
import torch
from num2words import num2words

from mmserve.models.decoding import translate
from mmserve.tasks.translation import decode_ids, encode_batch
from server.backends import LoadOptions, load_backend
from server.batching import BatchPolicy
from server.continuous import ContinuousBatcher, TranslationJob
from server.errors import BackendFault
from server.metrics import Metrics
from stepper_support import DelegatingStepper

TEXTS = [num2words(n) for n in (0, 7, 42, 105, 999, 1234, 20_020, 345_678, 13, 88, 700_001, 5, 61, 4_004)]


class Stepper(DelegatingStepper):
    """Wraps the torch translator: optional delay per step, optional faults, records batch shapes."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        super().__init__(inner, delay)
        self.fail_decode_at: int | None = None
        self.fail_encode_token: int | None = None
        self.steps = 0
        self.shapes: list[tuple[int, int, int]] = []  # (rows, cache slots, source width) per step

    def encode(self, src_ids, src_pad_mask):
        if self.fail_encode_token is not None and bool((src_ids == self.fail_encode_token).any()):
            raise RuntimeError("injected encode fault")
        return super().encode(src_ids, src_pad_mask)

    def decode_step(self, tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask):
        self.steps += 1
        if self.fail_decode_at is not None and self.steps == self.fail_decode_at:
            raise RuntimeError("injected decode fault")
        self.shapes.append((tokens.shape[0], self_pad_mask.shape[1] - 1, src_pad_mask.shape[1]))
        return super().decode_step(tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask)


@pytest.fixture(scope="module")
def backend(tiny_translator):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_backend("torch", tiny_translator, "translation", LoadOptions())
    torch.set_num_threads(threads)


def _job(backend, text: str, beam: int, max_length: int) -> TranslationJob:
    ids, pad = encode_batch(backend.tokenizer, [text])
    return TranslationJob(tuple(ids[0, : int((~pad).sum())].tolist()), beam, max_length)


def _batcher(backend, stepper, max_rows: int = 16, tokens: int = 4096, metrics=None) -> ContinuousBatcher:
    g = backend.tokenizer.generation
    return ContinuousBatcher("tiny", stepper, g.bos_id, g.eos_id, g.pad_id, g.length_penalty,
                             BatchPolicy(max_batch_size=max_rows, max_queue_delay_s=0.001), tokens, metrics=metrics)


def test_staggered_joins_decode_like_alone(backend) -> None:
    stepper = Stepper(backend.stepper, delay=0.002)
    metrics = Metrics()
    batcher = _batcher(backend, stepper, max_rows=12, tokens=700, metrics=metrics)
    plan = [(text, beam, max_length) for i, text in enumerate(TEXTS)
            for beam, max_length in [((1, 2, 3, 1)[i % 4], (9, 17, 26, 30)[i % 4])]]
    plan += [(text, 4 - (i % 3), 20) for i, text in enumerate(TEXTS[::2])]

    async def run():
        batcher.start()
        tasks = []
        for n, (text, beam, max_length) in enumerate(plan):
            tasks.append(asyncio.create_task(batcher.submit([_job(backend, text, beam, max_length)])))
            await asyncio.sleep(0.003 * (n % 3))  # arrivals while earlier sentences are mid-decode
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    batcher.stop()
    for (text, beam, max_length), [(tokens, score)] in zip(plan, results, strict=True):
        want = translate(backend.stepper, backend.tokenizer, [text], beam_size=beam, max_length=max_length)[0]
        assert decode_ids(backend.tokenizer, tokens) == want[0], (text, beam, max_length)
        assert score == pytest.approx(want[1], abs=1e-4)
    assert batcher.joins_mid_flight > 0
    assert max(rows for rows, _, _ in stepper.shapes) <= 12  # the row budget holds (beams count K rows)
    assert max(slots for _, slots, _ in stepper.shapes) < 30  # trimmed: never more than the longest history
    assert max(rows for rows, _, _ in stepper.shapes) > 4
    assert batcher.rows == 0 and all(lane.self_kv is None for lane in batcher.lanes)


def test_decode_fault_fails_the_running_batch_only(backend) -> None:
    stepper = Stepper(backend.stepper)
    batcher = _batcher(backend, stepper)
    stepper.fail_decode_at = 3

    async def run():
        batcher.start()
        first = await asyncio.gather(*(batcher.submit([_job(backend, t, 1, 10)]) for t in TEXTS[:3]),
                                     return_exceptions=True)
        after = await batcher.submit([_job(backend, TEXTS[3], 2, 10)])
        return first, after

    first, after = asyncio.run(run())
    batcher.stop()
    assert all(isinstance(r, BackendFault) for r in first)
    want = translate(backend.stepper, backend.tokenizer, [TEXTS[3]], beam_size=2, max_length=10)[0]
    assert decode_ids(backend.tokenizer, after[0][0]) == want[0]


def test_encode_fault_fails_only_the_newcomers(backend) -> None:
    stepper = Stepper(backend.stepper, delay=0.003)
    batcher = _batcher(backend, stepper)
    poison = _job(backend, "nine hundred", 1, 10)
    stepper.fail_encode_token = poison.src[0]

    async def run():
        batcher.start()
        running = asyncio.create_task(batcher.submit([_job(backend, "forty-two", 1, 30)]))
        await asyncio.sleep(0.03)  # running is mid-decode when the poisoned sentence arrives
        with pytest.raises(BackendFault):
            await batcher.submit([poison])
        return await running

    [(tokens, _)] = asyncio.run(run())
    batcher.stop()
    assert decode_ids(backend.tokenizer, tokens) == translate(backend.stepper, backend.tokenizer, ["forty-two"],
                                                              beam_size=1, max_length=30)[0][0]


def test_cancelled_sentence_leaves_the_batch(backend) -> None:
    """A sentence whose request is cancelled (client gone) stops costing rows at the next step."""
    stepper = Stepper(backend.stepper, delay=0.003)
    metrics = Metrics()
    batcher = _batcher(backend, stepper, metrics=metrics)
    # "seven" runs to max_length with this model, greedy and with beams (checked below).
    keep_job, doomed_job = _job(backend, "seven", 1, 40), _job(backend, "seven", 3, 40)

    async def run():
        batcher.start()
        keep = asyncio.create_task(batcher.submit([keep_job]))
        doomed = asyncio.create_task(batcher.submit([doomed_job]))
        await asyncio.sleep(0.03)
        doomed.cancel()
        return await keep

    [(tokens, _)] = asyncio.run(run())
    batcher.stop()
    assert len(tokens) == 40  # the kept sentence decoded all 40 steps
    rows = [r for r, _, _ in stepper.shapes]
    assert rows[0] == 4 and rows[-1] == 1  # 1 greedy + 3 beam rows, then only the greedy row
    assert rows.count(4) < 40 and rows.index(1) == rows.count(4)  # dropped mid-decode, never back
    assert 'mmserve_rejected_total{model="tiny",reason="cancelled"} 1.0' in metrics.render().decode()
