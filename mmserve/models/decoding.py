"""Greedy and beam search over the translator's step API, for any backend that implements it.

Everything here talks to a `Seq2SeqStepper` (the torch `MultiMaxTranslator` implements it itself; the
ONNX runner implements it with onnxruntime), so torch and ONNX decode with literally the same code.

Scores are sums of MultiMax log-probabilities, log_softmax(decode_step logits) = log multimax(output
projection), of the generated tokens (EOS included, BOS excluded), divided by a length penalty.
The length penalty is the GNMT one (Wu et al. 2016, "Google's Neural Machine Translation System"):

    lp(n) = ((5 + n) / 6) ** alpha,     score = sum(log p) / lp(n),     n = generated tokens

alpha = 0 means no normalisation (plain sum); alpha > 0 favours longer hypotheses. Greedy search
reports the same normalised score, so `greedy_search` == `beam_search(beam_size=1)` token for token
and score for score.

Beam search (batched over sentences x beams) follows the usual scheme (fairseq / Hugging Face): at
each step the 2K best (beam, token) continuations of a sentence are ranked; an EOS among the first K
closes a hypothesis (kept if it is among the K best closed so far), and the K best non-EOS
continuations stay live. A sentence stops early once it has K closed hypotheses and none of its live
beams scores better than the worst of them (scored at the beam's current length: Hugging Face's
`early_stopping=False` rule, exact for alpha = 0). Stopping as soon as K hypotheses are closed
(`early_stopping=True`) was measured to be much worse here: weak EOS continuations fill the K slots
before the best hypothesis ends. At `max_length` live beams are closed as they are (truncated).
Finished sentences leave the batch, so their rows stop costing compute. PAD and BOS are never generated.

`SearchRules(style="fairseq")` switches the same loops to fairseq-generate's rules (fairseq 0.12
`SequenceGenerator`, for translators imported from fairseq): scores are divided by len ** alpha
(len = generated tokens, EOS included), <unk>'s log-prob is lowered by `unk_penalty`, EOS is banned
before `min_length` tokens and forced at the last step (`max_length` = fairseq's max_len + 1), and a
sentence ends as soon as beam_size hypotheses have ended (fairseq's stopping rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

__all__ = [
    "Seq2SeqStepper",
    "BatchSearcher",
    "Hypothesis",
    "SearchRules",
    "length_penalty",
    "greedy_search",
    "beam_search",
    "translate",
]

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@runtime_checkable
class Seq2SeqStepper(Protocol):
    """The translator step API (CONTRACTS.md). Tensors are torch tensors (an ONNX runner converts at
    its boundary); masks are bool with True = padding; every method works on any batch size."""

    def encode(self, src_ids: torch.Tensor, src_pad_mask: torch.Tensor) -> torch.Tensor:
        """[B,S] ids + [B,S] mask -> memory [B,S,D]."""
        ...

    def cross_kv(self, memory: torch.Tensor) -> KVCache:
        """memory -> per decoder layer (k, v), each [B,H,S,Dh]."""
        ...

    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        self_kv: Optional[KVCache],
        self_pad_mask: torch.Tensor,
        cross_kv: KVCache,
        src_pad_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, KVCache]:
        """T new tokens on a P-slot cache -> (modulated logits [B,T,V], cache [B,H,P+T,Dh] per layer)."""
        ...

    def reorder_kv(self, kv: KVCache, index: torch.Tensor) -> KVCache:
        """The cache rows `index` (LongTensor [N]): beam reordering, batch expansion, dropping rows."""
        ...


@runtime_checkable
class BatchSearcher(Protocol):
    """A stepper that also runs a whole search natively (`mmserve.models.native.NativeTranslator`):
    `greedy_search` / `beam_search` hand it the batch instead of looping in Python. It must follow the
    loops below exactly; the tests compare the two."""

    def search(
        self,
        src_ids: torch.Tensor,
        src_pad_mask: torch.Tensor,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        max_length: int,
        beam_size: int,
        alpha: float,
        n_best: int,
        rules: "SearchRules",
    ) -> list[list["Hypothesis"]]:
        ...


@dataclass
class Hypothesis:
    """One decoded sequence: generated ids (EOS included when it was generated) and its score."""

    tokens: list[int]
    score: float


def length_penalty(length: torch.Tensor | float, alpha: float) -> torch.Tensor | float:
    """GNMT length penalty ((5 + n) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass(frozen=True)
class SearchRules:
    """Per-step scoring rules on top of the search loops: mmserve's (GNMT penalty, no constraints,
    early stopping by score) or fairseq-generate's (see the module docstring)."""

    style: Literal["mmserve", "fairseq"] = "mmserve"
    min_length: int = 0
    unk_id: Optional[int] = None
    unk_penalty: float = 0.0

    @property
    def adjusts_log_probs(self) -> bool:
        return self.style == "fairseq" or self.min_length > 0 or bool(self.unk_penalty and self.unk_id is not None)

    @property
    def stop_when_beam_full(self) -> bool:
        """fairseq ends a sentence once beam_size hypotheses ended, whatever the live beams score."""
        return self.style == "fairseq"

    def penalty(self, length: float, alpha: float) -> float:
        """Divisor of a hypothesis' summed log-probs at `length` generated tokens (EOS included)."""
        if self.style == "fairseq":
            return float(length) ** alpha
        return length_penalty(float(length), alpha)

    def adjust(self, logp: torch.Tensor, eos_id: int, steps: torch.Tensor, max_lengths: torch.Tensor) -> torch.Tensor:
        """Apply the rules in place to log-probs [N, V] of rows at `steps` [N] (tokens generated so
        far) with `max_lengths` [N] (tokens allowed, EOS included); fairseq's order of operations."""
        if self.unk_id is not None and self.unk_penalty:
            logp[:, self.unk_id] -= self.unk_penalty
        if self.style == "fairseq":
            last = steps >= max_lengths - 1
            if bool(last.any()):
                eos = logp[last, eos_id].clone()
                logp[last] = float("-inf")
                logp[last, eos_id] = eos
        if self.min_length:
            early = steps < self.min_length
            if bool(early.any()):
                logp[early, eos_id] = float("-inf")
        return logp


_DEFAULT_RULES = SearchRules()


def _apply_rules(rules: SearchRules, logp: torch.Tensor, eos_id: int, step: int, max_length: int) -> torch.Tensor:
    if not rules.adjusts_log_probs:
        return logp
    n = logp.shape[0]
    steps = torch.full((n,), step, dtype=torch.long, device=logp.device)
    return rules.adjust(logp, eos_id, steps, torch.full_like(steps, max_length))


def _encode_state(stepper: Seq2SeqStepper, src_ids: torch.Tensor, src_pad_mask: torch.Tensor):
    memory = stepper.encode(src_ids, src_pad_mask)
    return stepper.cross_kv(memory)


def _banned_ids(pad_id: int, bos_id: int, eos_id: int, device: torch.device) -> Optional[torch.Tensor]:
    """The ids never generated (PAD, BOS) as an index tensor for `_log_probs`; None if there are none."""
    banned = sorted({pad_id, bos_id} - {eos_id})
    return torch.tensor(banned, dtype=torch.long, device=device) if banned else None


def _log_probs(logits: torch.Tensor, banned: Optional[torch.Tensor]) -> torch.Tensor:
    """MultiMax log-probs of the last position [N, V] in float32, banned ids at -inf.

    `index_fill_` with a prepared index rather than `logp[:, ids] = -inf` (the same values; the
    advanced-indexing assignment costs ~3x more per step, measured on 32 x 320 log-probs)."""
    logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
    if banned is not None:
        logp.index_fill_(1, banned, float("-inf"))
    return logp


def _row_max(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, first arg-max) of each row, as `logp.max(dim=-1)` returns them.

    On the CPU through numpy (shared memory, no copy): torch's max-with-indices over a 32 x 320 batch
    costs ~22 us a step against ~3 us, and greedy decoding calls it every step. numpy's argmax, like
    torch's max, returns the first maximal index of a row."""
    if logp.device.type != "cpu":
        return logp.max(dim=-1)
    values = logp.numpy()
    index = values.argmax(axis=-1)
    return torch.from_numpy(values[np.arange(values.shape[0]), index]), torch.from_numpy(index)


@torch.no_grad()
def greedy_search(
    stepper: Seq2SeqStepper,
    src_ids: torch.Tensor,
    src_pad_mask: torch.Tensor,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    alpha: float = 0.0,
    rules: SearchRules = _DEFAULT_RULES,
) -> list[Hypothesis]:
    """Arg-max decoding of each source row; one `Hypothesis` per row, in order."""
    if isinstance(stepper, BatchSearcher):
        hyps = stepper.search(src_ids, src_pad_mask, bos_id, eos_id, pad_id, max_length, 1, alpha, 1, rules)
        return [h[0] for h in hyps]
    batch = src_ids.shape[0]
    device = src_ids.device
    cross = _encode_state(stepper, src_ids, src_pad_mask)
    src_mask = src_pad_mask
    rows = torch.arange(batch, device=device)  # which sentence each live row is
    tokens = torch.full((batch, 1), bos_id, dtype=torch.long, device=device)
    self_kv: Optional[KVCache] = None
    sums = torch.zeros(batch, dtype=torch.float32, device=device)
    out: list[list[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    banned = _banned_ids(pad_id, bos_id, eos_id, device)
    for step in range(max_length):
        live = rows.shape[0]
        positions = torch.full((live, 1), step, dtype=torch.long, device=device)
        pad = torch.zeros(live, step + 1, dtype=torch.bool, device=device)
        logits, self_kv = stepper.decode_step(tokens, positions, self_kv, pad, cross, src_mask)
        logp = _apply_rules(rules, _log_probs(logits, banned), eos_id, step, max_length)
        best_logp, best = _row_max(logp)
        sums = sums + best_logp
        done = best == eos_id
        if step == max_length - 1:
            done = torch.ones_like(done)
        for r, tok in zip(rows.tolist(), best.tolist()):
            out[r].append(tok)
        if bool(done.any()):
            lp = rules.penalty(step + 1, alpha)
            for r, s in zip(rows[done].tolist(), sums[done].tolist()):
                scores[r] = s / lp
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, sums, best = rows[keep], sums[keep], best[keep]
            src_mask = src_mask.index_select(0, keep)
            cross = stepper.reorder_kv(cross, keep)
            self_kv = stepper.reorder_kv(self_kv, keep)
        tokens = best.unsqueeze(1)
    return [Hypothesis(tokens, score) for tokens, score in zip(out, scores)]


@torch.no_grad()
def beam_search(
    stepper: Seq2SeqStepper,
    src_ids: torch.Tensor,
    src_pad_mask: torch.Tensor,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    n_best: int = 1,
    rules: SearchRules = _DEFAULT_RULES,
) -> list[list[Hypothesis]]:
    """Batched beam search; per source row the `n_best` (<= beam_size) best hypotheses, best first."""
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= n_best <= beam_size, got {beam_size}, {n_best}")
    if isinstance(stepper, BatchSearcher):
        return stepper.search(src_ids, src_pad_mask, bos_id, eos_id, pad_id, max_length, beam_size, alpha, n_best, rules)
    k = beam_size
    batch = src_ids.shape[0]
    device = src_ids.device
    cross = _encode_state(stepper, src_ids, src_pad_mask)  # one row per sentence until step 0 is done
    expand = torch.arange(batch, device=device).repeat_interleave(k)
    src_mask = src_pad_mask
    banned = _banned_ids(pad_id, bos_id, eos_id, device)
    neg_inf = float("-inf")

    sentences = torch.arange(batch, device=device)  # sentence id of each live sentence slot
    live_scores = torch.full((batch, k), neg_inf, device=device)
    live_scores[:, 0] = 0.0  # all beams start identical: only one may expand at the first step
    history = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)  # BOS + generated
    self_kv: Optional[KVCache] = None
    # Closed hypotheses per live sentence: normalised scores and tokens (padded), K best kept.
    closed_scores = torch.full((batch, k), neg_inf, device=device)
    closed_tokens = torch.full((batch, k, max_length), pad_id, dtype=torch.long, device=device)
    closed_lengths = torch.zeros((batch, k), dtype=torch.long, device=device)
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]

    def close(new_scores: torch.Tensor, new_tokens: torch.Tensor, new_lengths: torch.Tensor) -> None:
        """Merge [n, K] candidate closed hypotheses into the K best closed of each sentence."""
        nonlocal closed_scores, closed_tokens, closed_lengths
        scores = torch.cat([closed_scores, new_scores], dim=1)
        tokens = torch.cat([closed_tokens, new_tokens], dim=1)
        lengths = torch.cat([closed_lengths, new_lengths], dim=1)
        closed_scores, order = scores.topk(k, dim=1)
        closed_tokens = tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, max_length))
        closed_lengths = lengths.gather(1, order)

    def padded(hist: torch.Tensor) -> torch.Tensor:
        """[n, K, len] generated tokens -> [n, K, max_length] padded with pad_id."""
        out = torch.full((*hist.shape[:2], max_length), pad_id, dtype=torch.long, device=device)
        out[..., : hist.shape[-1]] = hist
        return out

    for step in range(max_length):
        n = sentences.shape[0]
        rows = n * k
        positions = torch.full((rows, 1), step, dtype=torch.long, device=device)
        pad = torch.zeros(rows, step + 1, dtype=torch.bool, device=device)
        if step == 0:
            # The K beams of a sentence are identical before the first step: decode one row per
            # sentence and expand after it (K times less work for that step, the same numbers).
            logits, self_kv = stepper.decode_step(history[::k, -1:], positions[::k], None, pad[::k], cross, src_mask)
            logits = logits.index_select(0, expand)
            cross = stepper.reorder_kv(cross, expand)
            src_mask = src_mask.index_select(0, expand)
        else:
            logits, self_kv = stepper.decode_step(history[:, -1:], positions, self_kv, pad, cross, src_mask)
        logp = _apply_rules(rules, _log_probs(logits, banned), eos_id, step, max_length)  # [n*K, V]
        vocab = logp.shape[-1]
        candidates = (live_scores.view(rows, 1) + logp).view(n, k * vocab)
        width = min(2 * k, k * vocab)
        top_scores, top_index = candidates.topk(width, dim=1)  # [n, 2K]
        top_beam = torch.div(top_index, vocab, rounding_mode="floor")
        top_token = top_index % vocab
        is_eos = top_token == eos_id
        lp = rules.penalty(step + 1, alpha)

        # EOS continuations ranked among the first K close their hypothesis.
        rank = torch.arange(width, device=device).unsqueeze(0)
        closing = is_eos & (rank < k) & torch.isfinite(top_scores)
        if bool(closing.any()):
            gen = history.view(n, k, -1)[:, :, 1:]  # generated so far, [n, K, step]
            src_beam = top_beam.masked_fill(~closing, 0)
            hist = gen.gather(1, src_beam.unsqueeze(-1).expand(-1, -1, gen.shape[-1]))
            hist = torch.cat([hist, torch.full_like(top_token, eos_id).unsqueeze(-1)], dim=-1)
            close(
                torch.where(closing, top_scores / lp, torch.full_like(top_scores, neg_inf)),
                padded(hist),
                torch.full_like(top_token, step + 1),
            )

        # The K best non-EOS continuations stay live (there are always >= K among the first 2K:
        # each beam contributes one EOS candidate at most).
        keep_rank = (~is_eos).cumsum(dim=1)
        chosen = (~is_eos) & (keep_rank <= k)
        order = torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices[:, :k]
        live_scores = top_scores.gather(1, order)
        beam = top_beam.gather(1, order)
        token = top_token.gather(1, order)
        origin = (torch.arange(n, device=device).unsqueeze(1) * k + beam).view(-1)
        history = torch.cat([history.index_select(0, origin), token.view(-1, 1)], dim=1)
        self_kv = stepper.reorder_kv(self_kv, origin if step else origin // k)  # step 0: rows are sentences

        # Done: K closed hypotheses and no live beam whose score (normalised at its current length)
        # beats the worst of them. Exact for alpha = 0 (live sums only fall); Hugging Face's
        # `early_stopping=False` rule otherwise. With K = 1 it stops exactly where greedy does.
        best_live = live_scores.max(dim=1).values / lp
        full = (closed_scores > neg_inf).sum(dim=1) >= k
        finished = full if rules.stop_when_beam_full else full & (best_live <= closed_scores[:, -1])
        if step == max_length - 1:
            # Out of room: close the live beams as they are (no EOS), then every sentence is done.
            close(live_scores / lp, padded(history.view(n, k, -1)[:, :, 1:]), torch.full_like(beam, step + 1))
            finished = torch.ones_like(finished)
        if bool(finished.any()):
            for slot in finished.nonzero().squeeze(1).tolist():
                hyps = []
                for j in range(n_best):
                    score = float(closed_scores[slot, j])
                    if score == neg_inf:
                        break
                    length = int(closed_lengths[slot, j])
                    hyps.append(Hypothesis(closed_tokens[slot, j, :length].tolist(), score))
                results[int(sentences[slot])] = hyps
            keep = (~finished).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            keep_rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            sentences = sentences[keep]
            live_scores = live_scores[keep]
            closed_scores, closed_tokens, closed_lengths = (
                closed_scores[keep], closed_tokens[keep], closed_lengths[keep]
            )
            history = history.index_select(0, keep_rows)
            src_mask = src_mask.index_select(0, keep_rows)
            cross = stepper.reorder_kv(cross, keep_rows)
            self_kv = stepper.reorder_kv(self_kv, keep_rows)
    return results


def translate(
    stepper: Seq2SeqStepper,
    tokenizer,
    texts: Sequence[str],
    beam_size: Optional[int] = None,
    max_length: Optional[int] = None,
    length_penalty: Optional[float] = None,
    batch_size: int = 256,
) -> list[tuple[str, float]]:
    """Translate texts end to end: normalise + tokenise (`mmserve.tasks.translation`), decode, detokenise.

    `tokenizer` is a `TranslationTokenizer`; unset settings come from its config.json["generation"]
    (beam_size 1 = greedy). Returns (text, score) per input text, in order. Bad input raises a
    `SourceTextError` (a UserError) naming the text.
    """
    from mmserve.tasks.translation import SourceTextError, decode_ids, encode_batch

    gen = tokenizer.generation
    beam_size = gen.beam_size if beam_size is None else int(beam_size)
    requested_length = max_length
    max_length = gen.max_length if max_length is None else int(max_length)
    alpha = gen.length_penalty if length_penalty is None else float(length_penalty)
    if beam_size < 1:
        raise SourceTextError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= max_length <= gen.max_length_limit:
        raise SourceTextError(
            f"max_length must be in 1..{gen.max_length_limit} for this model, got {max_length}"
        )
    rules = search_rules(gen)
    texts = list(texts)
    src_ids, src_pad_mask = encode_batch(tokenizer, texts)  # validates every text before any work
    device = _stepper_device(stepper)
    results: list[tuple[str, float]] = []
    for start in range(0, len(texts), batch_size):
        ids = src_ids[start : start + batch_size]
        mask = src_pad_mask[start : start + batch_size]
        width = int((~mask).sum(dim=1).max())  # drop columns that are padding in every row of the chunk
        ids, mask = ids[:, :width].to(device), mask[:, :width].to(device)
        # fairseq's max_len_a * src_len + max_len_b, src_len being the batch's padded width as there
        length = gen.max_length_for(width) if requested_length is None else max_length
        args = (gen.bos_id, gen.eos_id, gen.pad_id, length)
        if beam_size == 1:
            hyps = greedy_search(stepper, ids, mask, *args, alpha=alpha, rules=rules)
        else:
            hyps = [h[0] for h in beam_search(stepper, ids, mask, *args, beam_size=beam_size, alpha=alpha, rules=rules)]
        results.extend((decode_ids(tokenizer, h.tokens), h.score) for h in hyps)
    return results


def search_rules(generation) -> SearchRules:
    """The SearchRules a model's GenerationConfig asks for (fairseq-generate's for imported models)."""
    return SearchRules(
        style=getattr(generation, "search", "mmserve"),
        min_length=getattr(generation, "min_length", 0),
        unk_id=generation.unk_id,
        unk_penalty=getattr(generation, "unk_penalty", 0.0),
    )


def _stepper_device(stepper: Seq2SeqStepper) -> torch.device:
    """Where the stepper wants its inputs: a torch module's parameter device, else the CPU."""
    device = getattr(stepper, "device", None)
    if isinstance(device, (str, torch.device)):
        return torch.device(device)
    parameters = getattr(stepper, "parameters", None)
    if callable(parameters):
        for p in parameters():
            return p.device
    return torch.device("cpu")
