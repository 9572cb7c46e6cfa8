"""Continuous batching for the translator (iteration-level scheduling, as in Orca / vLLM / TGI).

The decoder runs one step at a time over a *running batch* of rows. Between two steps the worker
retires finished sentences (their rows leave at once, their answers go back) and admits queued ones
(they join mid-flight), so a long sentence never holds short ones hostage and a new request never waits
for the whole running batch to finish. The step API (CONTRACTS.md) is what makes rows with different
histories share one `decode_step`:

- self-attention cache [R, H, P, Dh]: a newcomer's cache is left-padded with P masked slots
  (`self_pad_mask` True), so every row's real history is a suffix of the P slots; `positions` are per
  row (a newcomer's BOS is at position 0 whatever P is). When the oldest rows leave, leading slots that
  are padding in every row are trimmed, so P stays the longest live history.
- cross-attention memory [R, H, S, Dh]: sources of different lengths are right-padded to the widest
  live source (`src_pad_mask`), and trimmed again when the widest one leaves.
- greedy sentences are one row each (vectorised over all greedy rows); a beam-search sentence is a
  group of K rows, reordered within its group after each step. The per-sentence arithmetic is exactly
  `mmserve.models.decoding` (same length penalty, banned ids, EOS/closing rules, early stopping), so a
  sentence decodes to the same tokens whether it runs alone or joins a crowded batch.

Admission is FIFO under two budgets: rows (`max_batch_size`, beams count K rows) and tokens
(sum over rows of source length + max_length <= `max_batch_tokens`, the memory a row can grow to).
Newcomers admitted together are sorted by source length and encoded in one padded batch. A sentence
whose client went away is dropped at the next step boundary. A failing `encode` fails only the
newcomers it was encoding; a failing `decode_step` fails the sentences in the running batch (that
batch), and the worker carries on with the queue.

Lanes (`lanes` > 1): that many worker threads, each with its own running batch (`_Lane`: its
sentences, caches and masks), all admitting from the one FIFO queue under the budgets above, which hold
per lane, and all calling the one stepper. It is CTranslate2's `inter_threads`: onnxruntime releases the
GIL inside `run` and a session may be run from several threads at once, so two loops of one intra-op
thread each decode side by side, where one loop of two intra-op threads gains little on a small
translator (`exporters.onnx.runtime.ThreadPolicy` has the measurements). A sentence lives in one lane
from admission to answer, and its arithmetic never looks at other rows, so it decodes to the same tokens
in any lane. A running lane leaves the queue to an idle lane when there is one, so light load spreads
over the lanes instead of crowding one. Everything above holds per lane: a failing `decode_step` fails
that lane's sentences only, and the other lanes carry on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from mmserve.models.decoding import SearchRules
from mmserve.tasks.translation import pad_sources

from .batching import BatchPolicy, BatchQueue, Item
from .metrics import Metrics

__all__ = ["ContinuousBatcher", "TranslationJob"]

log = logging.getLogger("mmserve.server.continuous")

NEG_INF = float("-inf")


@dataclass(frozen=True)
class TranslationJob:
    """One source sentence, tokenised (EOS appended), with its decoding settings."""

    src: tuple[int, ...]
    beam_size: int
    max_length: int

    @property
    def rows(self) -> int:
        return self.beam_size

    @property
    def tokens(self) -> int:
        """The most cache memory this job can need, in tokens (rows x (source + target))."""
        return self.beam_size * (len(self.src) + self.max_length)


@dataclass(eq=False)
class _Sentence:
    """A job in flight: K rows (K = 1 for greedy) and its search state."""

    item: Item
    job: TranslationJob
    step: int = 0  # tokens generated so far by each row
    generated: list[list[int]] = field(default_factory=list)  # per row, BOS excluded
    # beam-search state (decoding.beam_search with one sentence)
    live_scores: Optional[torch.Tensor] = None  # [1, K]
    closed_scores: Optional[torch.Tensor] = None  # [1, K]
    closed_tokens: Optional[torch.Tensor] = None  # [1, K, max_length]
    closed_lengths: Optional[torch.Tensor] = None  # [1, K]
    result: Optional[tuple[list[int], float]] = None

    @property
    def k(self) -> int:
        return self.job.beam_size


class _Lane:
    """One decode loop's running batch: its sentences (in row order; sentence i owns rows
    [offset, offset + k)) and the tensors their rows share. Only the lane's own worker thread reads or
    writes it; other threads (metrics, Retry-After, tests) read the plain ints `reported_rows`,
    `steps_run` and `joins_mid_flight`."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.steps_run = 0
        self.joins_mid_flight = 0  # admissions into a non-empty running batch
        self.reported_rows = 0  # this lane's share of the rows gauge (and of `ContinuousBatcher.rows`)
        self.reset()

    def reset(self) -> None:
        """Forget the running batch (all its sentences have left)."""
        self.sentences: list[_Sentence] = []
        self.self_kv: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None  # [R, H, P, Dh]
        self.self_pad: Optional[torch.Tensor] = None  # [R, P]
        self.cross_kv: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None  # [R, H, S, Dh]
        self.src_pad: Optional[torch.Tensor] = None  # [R, S]
        self.tokens: Optional[torch.Tensor] = None  # [R] next input token per row
        self.positions: Optional[torch.Tensor] = None  # [R]
        self.sums: Optional[torch.Tensor] = None  # [R] greedy running log-prob sums (float32)

    @property
    def rows(self) -> int:
        return sum(s.k for s in self.sentences)

    def tokens_in_use(self) -> int:
        return sum(s.job.tokens for s in self.sentences)

    def trim(self) -> None:
        """Drop cache slots that are padding in every row (oldest first) and source columns that are
        padding in every row (widest source gone)."""
        if self.self_kv is not None and self.self_pad.shape[1]:
            used = (~self.self_pad).any(dim=0)
            first = int(used.to(torch.int8).argmax()) if bool(used.any()) else self.self_pad.shape[1]
            if first:
                self.self_pad = self.self_pad[:, first:]
                self.self_kv = [(k[:, :, first:], v[:, :, first:]) for k, v in self.self_kv]
        used = (~self.src_pad).any(dim=0)
        width = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
        if width < self.src_pad.shape[1]:
            self.src_pad = self.src_pad[:, :width]
            self.cross_kv = [(k[:, :, :width], v[:, :, :width]) for k, v in self.cross_kv]


class ContinuousBatcher(BatchQueue):
    """The translator's queue + decode loops. Items are `TranslationJob`s; results (token ids, score).

    `lanes` worker threads each run their own batch (see the module docstring); the row and token
    budgets (`policy.max_batch_size`, `max_batch_tokens`) hold per lane. With more than one lane the
    stepper's methods are called from several threads at once, so it must be re-entrant (the
    onnxruntime and torch steppers are: neither keeps state between calls)."""

    def __init__(
        self,
        name: str,
        stepper: Any,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        alpha: float,
        policy: BatchPolicy,
        max_batch_tokens: int,
        device: torch.device | str = "cpu",
        metrics: Optional[Metrics] = None,
        rules: SearchRules = SearchRules(),
        lanes: int = 1,
    ) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        super().__init__(name, policy, metrics)
        self.rules = rules  # decoding.SearchRules: mmserve's or fairseq-generate's scoring
        self.stepper = stepper
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.alpha = alpha
        self.banned = sorted({pad_id, bos_id} - {eos_id})
        self.max_batch_tokens = max_batch_tokens
        self.device = torch.device(device)
        self.lanes = [_Lane(i) for i in range(lanes)]
        self._idle_lanes = 0  # lanes waiting in _admit with nothing running (under the lock)
        self._m.active_rows.set(0)

    def _worker_count(self) -> int:
        return len(self.lanes)

    # ------------------------------------------------------------------ totals over the lanes

    @property
    def rows(self) -> int:
        """Decoder rows running in all lanes."""
        return sum(lane.reported_rows for lane in self.lanes)

    @property
    def steps_run(self) -> int:
        return sum(lane.steps_run for lane in self.lanes)

    @property
    def joins_mid_flight(self) -> int:
        """Admissions into a non-empty running batch (for tests/metrics)."""
        return sum(lane.joins_mid_flight for lane in self.lanes)

    def _set_rows(self, lane: _Lane) -> None:
        """Move the rows gauge by this lane's change only: each lane adds its own share, so lanes
        updating it at the same time never overwrite each other's rows."""
        rows = lane.rows
        if rows != lane.reported_rows:
            self._m.active_rows.inc(rows - lane.reported_rows)
            lane.reported_rows = rows

    def _reset(self, lane: _Lane) -> None:
        lane.reset()
        self._set_rows(lane)

    # ------------------------------------------------------------------ worker loop

    def _worker(self, index: int) -> None:
        lane = self.lanes[index]
        while True:
            newcomers = self._admit(lane)
            if newcomers is None:
                return
            if newcomers:
                self._join(lane, newcomers)
            self._drop_cancelled(lane)
            if lane.sentences:
                self._step(lane)

    def _admit(self, lane: _Lane) -> Optional[list[Item]]:
        """Items for `lane` to add before its next step. Blocks only when the lane runs nothing;
        None = stop (stopping, queue empty, lane empty)."""
        p = self.policy
        with self._cond:
            if not lane.sentences:
                self._idle_lanes += 1
                try:
                    while not self._queue:
                        if self._stopping:
                            return None
                        self._cond.wait()
                    # Idle start: give concurrent arrivals max_queue_delay to share the first encode.
                    deadline = self._queue[0].enqueued + p.max_queue_delay_s
                    while not self._stopping and sum(i.payload.rows for i in self._queue) < p.max_batch_size:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                finally:
                    self._idle_lanes -= 1
            rows, tokens = lane.rows, lane.tokens_in_use()
            free = p.max_batch_size - rows
            if rows and self._queue and (self._idle_lanes or free < self._join_threshold()):
                # An idle lane takes the queue within max_queue_delay and decodes it side by side;
                # otherwise let a few more rows free up: one join of many is cheaper than many of one.
                return []
            admitted: list[Item] = []
            while self._queue:
                job: TranslationJob = self._queue[0].payload
                empty = rows == 0 and not admitted
                if not empty and (rows + job.rows > p.max_batch_size or tokens + job.tokens > self.max_batch_tokens):
                    break  # FIFO: do not let small jobs overtake the head forever
                item = self._queue.popleft()
                if item.future.cancelled():
                    continue
                admitted.append(item)
                rows, tokens = rows + job.rows, tokens + job.tokens
            if self._queue and admitted:
                self._cond.notify()  # what did not fit here: wake an idle lane for it (submit woke one only)
            self._set_depth()
        now = time.monotonic()
        admitted = self._expire(admitted, now)
        self._observe_wait(admitted, now)
        return admitted

    def _join_threshold(self) -> int:
        """Free rows needed before queued sentences join a running decode: half the batch, or all that
        is waiting when that is less (light load joins at once). Each join is an encoder call, a
        cross-attention call and a copy of every cache, and with small models onnxruntime's per-call
        cost dominates, so fewer, larger joins win: at saturation on the bundled translator (2 cores,
        `benchmarks/bench_server.py --only translate`) half the batch gave 784-801 sentences/s against
        672-720 for a quarter, and joining a handful of rows at every step spent ~40% of the worker's
        time in joins. No starvation: running sentences all end within their max_length, so free rows
        always reach the threshold."""
        half = max(1, self.policy.max_batch_size // 2)
        waiting = 0
        for item in self._queue:
            waiting += item.payload.rows
            if waiting >= half:
                return half
        return waiting

    # ------------------------------------------------------------------ joining

    def _join(self, lane: _Lane, items: list[Item]) -> None:
        """Encode newcomers (sorted by length, one padded batch) and append their rows to the lane."""
        items = sorted(items, key=lambda i: len(i.payload.src))
        src, src_pad = pad_sources([i.payload.src for i in items], self.pad_id)
        src, src_pad = src.to(self.device), src_pad.to(self.device)
        expand = torch.repeat_interleave(torch.arange(len(items)), torch.tensor([i.payload.rows for i in items]))
        expand = expand.to(self.device)
        try:
            with torch.inference_mode():
                cross = self.stepper.cross_kv(self.stepper.encode(src, src_pad))
                if len(expand) != len(items):
                    cross = self.stepper.reorder_kv(cross, expand)
        except Exception:
            self._backend_failed(items)
            return
        src_pad = src_pad.index_select(0, expand)
        new_rows = len(expand)
        new_sentences = [self._new_sentence(item) for item in items]
        if lane.sentences:
            lane.joins_mid_flight += len(items)
            self._m.decoder_joins.inc(len(items))
        if not lane.sentences:
            lane.self_kv, lane.self_pad = None, torch.zeros(new_rows, 0, dtype=torch.bool, device=self.device)
            lane.cross_kv, lane.src_pad = cross, src_pad
            lane.tokens = torch.full((new_rows,), self.bos_id, dtype=torch.long, device=self.device)
            lane.positions = torch.zeros(new_rows, dtype=torch.long, device=self.device)
            lane.sums = torch.zeros(new_rows, dtype=torch.float32, device=self.device)
        else:
            lane.cross_kv, lane.src_pad = _concat_memory(lane.cross_kv, lane.src_pad, cross, src_pad)
            past = lane.self_pad.shape[1]
            if lane.self_kv is not None and past > 0:
                lane.self_kv = [
                    (torch.cat([k, k.new_zeros((new_rows, *k.shape[1:]))]),
                     torch.cat([v, v.new_zeros((new_rows, *v.shape[1:]))]))
                    for k, v in lane.self_kv
                ]
            lane.self_pad = torch.cat(
                [lane.self_pad, torch.ones(new_rows, past, dtype=torch.bool, device=self.device)]
            )
            lane.tokens = torch.cat([lane.tokens, torch.full((new_rows,), self.bos_id, dtype=torch.long,
                                                             device=self.device)])
            lane.positions = torch.cat([lane.positions,
                                        torch.zeros(new_rows, dtype=torch.long, device=self.device)])
            lane.sums = torch.cat([lane.sums, torch.zeros(new_rows, dtype=torch.float32, device=self.device)])
        lane.sentences.extend(new_sentences)
        self._set_rows(lane)

    def _new_sentence(self, item: Item) -> _Sentence:
        job: TranslationJob = item.payload
        s = _Sentence(item, job, generated=[[] for _ in range(job.beam_size)])
        if job.beam_size > 1:
            k, device = job.beam_size, self.device
            s.live_scores = torch.full((1, k), NEG_INF, device=device)
            s.live_scores[:, 0] = 0.0  # all beams start identical: only one may expand at the first step
            s.closed_scores = torch.full((1, k), NEG_INF, device=device)
            s.closed_tokens = torch.full((1, k, job.max_length), self.pad_id, dtype=torch.long, device=device)
            s.closed_lengths = torch.zeros((1, k), dtype=torch.long, device=device)
        return s

    def _drop_cancelled(self, lane: _Lane) -> None:
        gone = [s for s in lane.sentences if s.item.future.cancelled()]
        if gone:
            self._count(len(gone), reason="cancelled")
            self._keep(lane, [s for s in lane.sentences if not s.item.future.cancelled()], None)

    # ------------------------------------------------------------------ one decoder step

    def _step(self, lane: _Lane) -> None:
        start = time.perf_counter()
        rows = lane.rows
        new_slot = torch.zeros(rows, 1, dtype=torch.bool, device=self.device)
        self_pad_mask = torch.cat([lane.self_pad, new_slot], 1)
        try:
            with torch.inference_mode():
                logits, new_kv = self.stepper.decode_step(
                    lane.tokens.unsqueeze(1), lane.positions.unsqueeze(1), lane.self_kv, self_pad_mask,
                    lane.cross_kv, lane.src_pad,
                )
                logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
                if self.banned:
                    logp[:, self.banned] = NEG_INF
                if self.rules.adjusts_log_probs:
                    steps = [s.step for s in lane.sentences for _ in range(s.k)]
                    limits = [s.job.max_length for s in lane.sentences for _ in range(s.k)]
                    logp = self.rules.adjust(logp, self.eos_id, torch.tensor(steps, device=logp.device),
                                             torch.tensor(limits, device=logp.device))
        except Exception:
            failed = [s.item for s in lane.sentences]
            self._reset(lane)
            self._backend_failed(failed)
            return
        lane.self_kv, lane.self_pad = new_kv, self_pad_mask
        greedy_best_logp, greedy_best = logp.max(dim=-1)
        lane.sums = lane.sums + greedy_best_logp  # only greedy rows read theirs (as greedy_search does)

        origin: list[int] = []  # for each surviving row, the row it continues
        next_tokens: list[int] = []
        survivors: list[_Sentence] = []
        finished: list[_Sentence] = []
        offset = 0
        best_list = greedy_best.tolist()
        for s in lane.sentences:
            k = s.k
            if k == 1:
                done = self._greedy(s, lane.sums, offset, best_list[offset])
                if not done:
                    origin.append(offset)
                    next_tokens.append(best_list[offset])
            else:
                result = self._beam(s, logp[offset: offset + k])
                done = result is None
                if not done:
                    beams, tokens = result
                    origin.extend(offset + b for b in beams)
                    next_tokens.extend(tokens)
            (finished if done else survivors).append(s)
            offset += k
        lane.steps_run += 1
        self._observe_run(rows, time.perf_counter() - start)
        if finished:
            self._succeed([(s.item, s.result) for s in finished])
        tokens = torch.tensor(next_tokens, dtype=torch.long, device=self.device)
        if len(origin) == rows and origin == list(range(rows)):  # nobody left, no beam moved: no copies
            lane.tokens, lane.positions = tokens, lane.positions + 1
            return
        self._keep(lane, survivors, torch.tensor(origin, dtype=torch.long, device=self.device), tokens)

    def _greedy(self, s: _Sentence, sums: torch.Tensor, row: int, token: int) -> bool:
        """decoding.greedy_search for one row (`sums`: the lane's running log-prob sums, read only
        when the sentence ends): True when the sentence is finished."""
        s.generated[0].append(token)
        s.step += 1
        if token == self.eos_id or s.step == s.job.max_length:
            score = float(sums[row]) / self.rules.penalty(s.step, self.alpha)
            s.result = (s.generated[0], score)
            return True
        return False

    def _beam(self, s: _Sentence, logp: torch.Tensor) -> Optional[tuple[list[int], list[int]]]:
        """decoding.beam_search for one sentence (n = 1): (source beam, token) per live row, or None
        when the sentence is finished (its best closed hypothesis is in `s.result`)."""
        k, eos, step, max_length = s.k, self.eos_id, s.step, s.job.max_length
        vocab = logp.shape[-1]
        candidates = (s.live_scores.view(k, 1) + logp).view(1, k * vocab)
        width = min(2 * k, k * vocab)
        top_scores, top_index = candidates.topk(width, dim=1)
        top_beam = torch.div(top_index, vocab, rounding_mode="floor")
        top_token = top_index % vocab
        is_eos = top_token == eos
        lp = self.rules.penalty(step + 1, self.alpha)
        rank = torch.arange(width, device=logp.device).unsqueeze(0)
        closing = is_eos & (rank < k) & torch.isfinite(top_scores)
        history = torch.tensor(s.generated, dtype=torch.long, device=logp.device).view(1, k, step)
        if bool(closing.any()):
            src_beam = top_beam.masked_fill(~closing, 0)
            hist = history.gather(1, src_beam.unsqueeze(-1).expand(-1, -1, step))
            hist = torch.cat([hist, torch.full_like(top_token, eos).unsqueeze(-1)], dim=-1)
            self._close(s, torch.where(closing, top_scores / lp, torch.full_like(top_scores, NEG_INF)),
                        self._padded(hist, max_length), torch.full_like(top_token, step + 1))
        keep_rank = (~is_eos).cumsum(dim=1)
        chosen = (~is_eos) & (keep_rank <= k)
        order = torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices[:, :k]
        s.live_scores = top_scores.gather(1, order)
        beam = top_beam.gather(1, order)
        token = top_token.gather(1, order)
        beams, tokens = beam.view(-1).tolist(), token.view(-1).tolist()
        s.generated = [s.generated[b] + [t] for b, t in zip(beams, tokens)]
        s.step += 1
        # Done: K closed hypotheses and no live beam (normalised at its current length) beating the
        # worst of them (decoding.beam_search's rule, Hugging Face's early_stopping=False).
        best_live = s.live_scores.max(dim=1).values / lp
        full = (s.closed_scores > NEG_INF).sum(dim=1) >= k
        finished = bool(full if self.rules.stop_when_beam_full else full & (best_live <= s.closed_scores[:, -1]))
        if step == max_length - 1:
            live = torch.tensor(s.generated, dtype=torch.long, device=logp.device).view(1, k, step + 1)
            self._close(s, s.live_scores / lp, self._padded(live, max_length), torch.full_like(beam, step + 1))
            finished = True
        if finished:
            length = int(s.closed_lengths[0, 0])
            s.result = (s.closed_tokens[0, 0, :length].tolist(), float(s.closed_scores[0, 0]))
            return None
        return beams, tokens

    def _close(self, s: _Sentence, scores: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> None:
        all_scores = torch.cat([s.closed_scores, scores], dim=1)
        all_tokens = torch.cat([s.closed_tokens, tokens], dim=1)
        all_lengths = torch.cat([s.closed_lengths, lengths], dim=1)
        s.closed_scores, order = all_scores.topk(s.k, dim=1)
        s.closed_tokens = all_tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, s.job.max_length))
        s.closed_lengths = all_lengths.gather(1, order)

    def _padded(self, hist: torch.Tensor, max_length: int) -> torch.Tensor:
        out = torch.full((*hist.shape[:2], max_length), self.pad_id, dtype=torch.long, device=hist.device)
        out[..., : hist.shape[-1]] = hist
        return out

    # ------------------------------------------------------------------ keeping rows

    def _keep(self, lane: _Lane, survivors: list[_Sentence], index: Optional[torch.Tensor],
              next_tokens: Optional[torch.Tensor] = None) -> None:
        """Restrict the lane's running batch to `survivors`. After a step `index` maps each new row to
        the old row it continues and `next_tokens` are their inputs; without `index` (dropping
        cancelled sentences between steps) rows are kept as they are."""
        if not survivors:
            self._reset(lane)
            return
        if index is None:
            keep, offset = [], 0
            alive = {id(s) for s in survivors}
            for s in lane.sentences:
                if id(s) in alive:
                    keep.extend(range(offset, offset + s.k))
                offset += s.k
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            next_tokens = lane.tokens.index_select(0, index)
            positions = lane.positions.index_select(0, index)
        else:
            positions = lane.positions.index_select(0, index) + 1
        lane.sentences = survivors
        if lane.self_kv is not None:
            lane.self_kv = self.stepper.reorder_kv(lane.self_kv, index)
        lane.self_pad = lane.self_pad.index_select(0, index)
        lane.cross_kv = self.stepper.reorder_kv(lane.cross_kv, index)
        lane.src_pad = lane.src_pad.index_select(0, index)
        lane.sums = lane.sums.index_select(0, index)
        lane.tokens, lane.positions = next_tokens, positions
        lane.trim()
        self._set_rows(lane)

    def retry_after(self, extra_items: int = 0) -> int:
        """Seconds until what is queued and running (plus `extra_items`) would likely have decoded:
        ~20 steps per sentence, the lanes' batches side by side (an average step's time already
        includes the lanes sharing the cores)."""
        rows = sum(i.payload.rows for i in list(self._queue)) + extra_items + self.rows
        steps = 2 * rows / max(1, self.policy.max_batch_size * len(self.lanes)) * 20
        return max(1, math.ceil(steps * self._avg_batch_s))


def _concat_memory(cross_a, pad_a, cross_b, pad_b):
    """Stack two cross-attention memories along the batch, right-padding the shorter source."""
    width = max(pad_a.shape[1], pad_b.shape[1])

    def widen(kv, pad):
        extra = width - pad.shape[1]
        if extra == 0:
            return kv, pad
        kv = [(torch.nn.functional.pad(k, (0, 0, 0, extra)), torch.nn.functional.pad(v, (0, 0, 0, extra)))
              for k, v in kv]
        return kv, torch.nn.functional.pad(pad, (0, extra), value=True)

    cross_a, pad_a = widen(cross_a, pad_a)
    cross_b, pad_b = widen(cross_b, pad_b)
    cross = [(torch.cat([ka, kb]), torch.cat([va, vb])) for (ka, va), (kb, vb) in zip(cross_a, cross_b)]
    return cross, torch.cat([pad_a, pad_b])
