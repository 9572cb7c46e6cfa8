"""Greedy and beam search: beam == brute force when the beam is wide enough to be exhaustive, greedy ==
beam_size 1, scores == teacher-forced rescoring, batch independence, max_length and banned tokens."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmserve.models import MultiMaxTranslator, TranslatorConfig
from mmserve.models.decoding import Seq2SeqStepper, beam_search, greedy_search, length_penalty

PAD, BOS, EOS = 0, 1, 2
VOCAB = 6  # pad, bos, eos + three real tokens


class EosBoost:
    """A stepper wrapping the model that adds a per-row, per-position bonus to EOS: makes short and long
    hypotheses compete, so the search has real decisions to make. Also counts decode steps."""

    def __init__(self, model: MultiMaxTranslator, bonus: torch.Tensor) -> None:
        self.model, self.bonus, self.calls = model, bonus, 0

    def encode(self, src_ids, src_pad_mask):
        return self.model.encode(src_ids, src_pad_mask)

    def cross_kv(self, memory):
        # The bonus row travels with the batch rows: stash it as an extra "layer" of the cross state.
        rows = torch.arange(memory.shape[0], dtype=torch.float32).view(-1, 1, 1, 1)
        return self.model.cross_kv(memory) + [(rows, rows)]

    def decode_step(self, tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask):
        self.calls += 1
        rows = cross_kv[-1][0].view(-1).long()
        logits, kv = self.model.decode_step(
            tokens, positions, self_kv, self_pad_mask, cross_kv[:-1], src_pad_mask
        )
        logits = logits.clone()
        logits[..., EOS] += self.bonus[rows].unsqueeze(1) * (positions.float() + 1)
        return logits, kv

    def reorder_kv(self, kv, index):
        return self.model.reorder_kv(kv, index)


def make_stepper(bonus=(0.3, 0.9, 1.6), seed: int = 0) -> tuple[EosBoost, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    cfg = TranslatorConfig(src_vocab_size=9, tgt_vocab_size=VOCAB, d_model=16, num_heads=2, encoder_layers=1,
                           decoder_layers=2, ffn_dim=32, dropout=0.0)
    model = MultiMaxTranslator(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    lengths = torch.tensor([4, 2, 5])
    src = torch.randint(3, 9, (3, 5), generator=g)
    src_pad = torch.arange(5).unsqueeze(0) >= lengths.unsqueeze(1)
    return EosBoost(model, torch.tensor(bonus)), src.masked_fill(src_pad, PAD), src_pad


@torch.no_grad()
def rescore(stepper: EosBoost, src, src_pad, row: int, seq: list[int], alpha: float) -> float:
    """Teacher-forced score of one generated sequence: sum of log p (over the full vocabulary) / lp."""
    one = torch.tensor([row])
    cross = stepper.cross_kv(stepper.encode(src[one], src_pad[one]))
    cross[-1] = (torch.full_like(cross[-1][0], row),) * 2
    tokens = torch.tensor([[BOS] + seq[:-1]])
    logits, _ = stepper.decode_step(tokens, torch.arange(len(seq)).unsqueeze(0), None,
                                    torch.zeros(1, len(seq), dtype=torch.bool), cross, src_pad[one])
    logp = torch.log_softmax(logits[0].float(), dim=-1)
    return float(sum(logp[i, t] for i, t in enumerate(seq))) / length_penalty(float(len(seq)), alpha)


def all_sequences(max_length: int) -> list[list[int]]:
    """Every output search can produce: real tokens then EOS, or max_length real tokens (truncated)."""
    real = [t for t in range(VOCAB) if t not in (PAD, BOS, EOS)]
    out = []
    for n in range(0, max_length):
        out += [list(p) + [EOS] for p in itertools.product(real, repeat=n)]
    out += [list(p) for p in itertools.product(real, repeat=max_length)]
    return out


def test_model_implements_the_protocol() -> None:
    stepper, _, _ = make_stepper()
    assert isinstance(stepper.model, Seq2SeqStepper)
    assert isinstance(stepper, Seq2SeqStepper)


def test_length_penalty_is_gnmt() -> None:
    assert length_penalty(1.0, 0.0) == 1.0
    assert math.isclose(length_penalty(7.0, 0.6), (12 / 6) ** 0.6)
    assert length_penalty(1.0, 1.0) == 1.0


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_exhaustive_beam_equals_brute_force(alpha: float) -> None:
    """With a beam wider than the number of live prefixes, beam search must find the exact n-best list."""
    max_length = 3
    stepper, src, src_pad = make_stepper()
    sequences = all_sequences(max_length)
    beam = beam_search(stepper, src, src_pad, BOS, EOS, PAD, max_length, beam_size=len(sequences),
                       alpha=alpha, n_best=6)
    for row in range(3):
        scored = [(rescore(stepper, src, src_pad, row, s, alpha), s) for s in sequences]
        brute = sorted(scored, key=lambda x: -x[0])
        assert [h.tokens for h in beam[row]] == [s for _, s in brute[:6]]
        for hyp, (score, _) in zip(beam[row], brute):
            assert math.isclose(hyp.score, score, abs_tol=1e-4)
    # The n-best lists hold every kind of ending (EOS after 0, 1, 2 tokens; truncated), so the ranking
    # across lengths, i.e. the length penalty, is what is being checked.
    kinds = {(len(h.tokens), h.tokens[-1] == EOS) for row in range(3) for h in beam[row]}
    assert {(1, True), (2, True), (3, True), (3, False)} <= kinds


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
@pytest.mark.parametrize(
    "bonus", [(0.3, 0.9, 1.6), (0.0, 0.0, 0.0), (3.0, 0.5, 0.05)], ids=["mixed", "none", "strong"]
)
def test_greedy_equals_beam_one(alpha: float, bonus) -> None:
    stepper, src, src_pad = make_stepper(bonus)
    greedy = greedy_search(stepper, src, src_pad, BOS, EOS, PAD, 7, alpha=alpha)
    beam = beam_search(stepper, src, src_pad, BOS, EOS, PAD, 7, beam_size=1, alpha=alpha)
    for g, b in zip(greedy, beam):
        assert g.tokens == b[0].tokens
        assert math.isclose(g.score, b[0].score, rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize("beam_size", [1, 2, 3, 5])
def test_scores_match_rescoring_and_rows_are_independent(beam_size: int) -> None:
    stepper, src, src_pad = make_stepper()
    alpha = 0.6
    together = beam_search(stepper, src, src_pad, BOS, EOS, PAD, 6, beam_size=beam_size, alpha=alpha,
                           n_best=beam_size)
    for row in range(3):
        for hyp in together[row]:
            assert PAD not in hyp.tokens and BOS not in hyp.tokens
            assert EOS not in hyp.tokens[:-1] and len(hyp.tokens) <= 6
            expected = rescore(stepper, src, src_pad, row, hyp.tokens, alpha)
            assert math.isclose(hyp.score, expected, abs_tol=1e-4)
        scores = [h.score for h in together[row]]
        assert scores == sorted(scores, reverse=True)
        # Decoding the row alone (its own bonus, its own padding) gives the same hypotheses.
        alone_stepper = EosBoost(stepper.model, stepper.bonus[row : row + 1])
        length = int((~src_pad[row]).sum())
        one_src, one_pad = src[row : row + 1, :length], src_pad[row : row + 1, :length]
        alone = beam_search(alone_stepper, one_src, one_pad, BOS, EOS, PAD, 6, beam_size=beam_size,
                            alpha=alpha, n_best=beam_size)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[row]]
        for a, t in zip(alone, together[row]):
            assert math.isclose(a.score, t.score, abs_tol=1e-5)


def test_max_length_truncates_and_finished_rows_leave_the_batch() -> None:
    stepper, src, src_pad = make_stepper(bonus=(50.0, -50.0, -50.0))  # row 0 ends at once, rows 1-2 never
    greedy = greedy_search(stepper, src, src_pad, BOS, EOS, PAD, 4, alpha=0.6)
    beam = [b[0] for b in beam_search(stepper, src, src_pad, BOS, EOS, PAD, 4, beam_size=2, alpha=0.6)]
    for hyps in (greedy, beam):
        assert hyps[0].tokens == [EOS]
        for row in (1, 2):
            tokens = hyps[row].tokens
            assert len(tokens) == 4 and EOS not in tokens  # truncated at max_length
            expected = rescore(stepper, src, src_pad, row, tokens, 0.6)
            assert math.isclose(hyps[row].score, expected, abs_tol=1e-4)
    stepper.calls = 0
    beam_search(stepper, src, src_pad, BOS, EOS, PAD, 4, beam_size=2, alpha=0.0)
    assert stepper.calls == 4  # one decode step per position; row 0 left the batch after the first
    with pytest.raises(ValueError, match="n_best"):
        beam_search(stepper, src, src_pad, BOS, EOS, PAD, 4, beam_size=2, n_best=3)


def test_beam_first_step_decodes_one_row_per_sentence() -> None:
    """Before the first step the K beams of a sentence are identical, so step 0 runs on one row per
    sentence (K times less work) and later steps on K rows per live sentence; the n-best lists equal
    those of a stepper that is handed K identical rows from the start (the search before this change)."""

    class Rows(EosBoost):
        def __init__(self, model, bonus, expand_first: bool) -> None:
            super().__init__(model, bonus)
            self.rows, self.expand_first = [], expand_first

        def decode_step(self, tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask):
            self.rows.append(tokens.shape[0])
            if self_kv is None and self.expand_first:  # the old search: K copies of every row
                index = torch.arange(tokens.shape[0]).repeat_interleave(4)
                logits, kv = super().decode_step(tokens[index], positions[index], None, self_pad_mask[index],
                                                 self.reorder_kv(cross_kv, index), src_pad_mask[index])
                return logits[::4], [(k[::4], v[::4]) for k, v in kv]
            return super().decode_step(tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask)

    base, src, src_pad = make_stepper()
    fast, full = Rows(base.model, base.bonus, False), Rows(base.model, base.bonus, True)
    hyps = [beam_search(s, src, src_pad, BOS, EOS, PAD, 5, beam_size=4, alpha=0.6, n_best=4) for s in (fast, full)]
    assert fast.rows[0] == 3 and fast.rows[1] == 12
    assert [[(h.tokens, round(h.score, 5)) for h in row] for row in hyps[0]] == \
           [[(h.tokens, round(h.score, 5)) for h in row] for row in hyps[1]]
