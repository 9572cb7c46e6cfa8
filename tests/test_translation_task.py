"""Translation pre/post-processing and data: normalisation, the BPE tokenizer, encode/decode, input
limits, loading a tokenizer from a model directory, the num2words splits, and a tiny training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmserve.checkpoints import CheckpointError
from mmserve.data import numbers
from mmserve.errors import UserError
from mmserve.tasks.translation import (
    GenerationConfig,
    SourceTextError,
    TranslationTokenizer,
    decode_ids,
    encode_batch,
    encode_target,
    load_tokenizer,
    normalize_source,
    special_ids,
    train_tokenizer,
)

# ---------------------------------------------------------------------------------------- normalise

CANONICAL = "twenty-one thousand three hundred and forty-two"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("twenty-one thousand, three hundred and forty-two", CANONICAL),
        ("  Twenty One   Thousand,Three Hundred and Forty – Two. ", CANONICAL),
        ("twenty-one thousand three hundred and forty-two!", CANONICAL),
        ("FORTY\u2011TWO", "forty-two"),
        ("ninety \u2212 nine", "ninety-nine"),
        ("seventy\tseven\n", "seventy-seven"),
        ("one hundred", "one hundred"),
        ("twenty", "twenty"),
        ("twentyone", "twentyone"),  # not a known compound: left alone (the model sees what was sent)
        ("\uff46\uff4f\uff55\uff52", "four"),  # full-width letters -> NFKC
    ],
)
def test_normalize_source(raw: str, expected: str) -> None:
    assert normalize_source(raw) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyz ,.-\u2013\t")), max_size=40))
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_source(text)
    assert normalize_source(once) == once
    assert "  " not in once and once == once.strip() and "," not in once


def test_training_sources_normalise_to_num2words_without_commas() -> None:
    for n in [0, 7, 42, 342, 1001, 21342, 100100, 999999]:
        assert normalize_source(numbers.english(n)) == numbers.english(n).replace(",", "")


# ---------------------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> TranslationTokenizer:
    pairs = numbers.make_pairs(list(range(1000)) + list(range(1000, 400_000, 397)))
    tok = train_tokenizer([normalize_source(s) for s in pairs.sources] + pairs.targets, 200)
    gen = GenerationConfig(**special_ids(tok), max_source_tokens=16, max_length=12, max_length_limit=24)
    return TranslationTokenizer(tok, gen)


def test_special_ids_come_first(tokenizer: TranslationTokenizer) -> None:
    gen = tokenizer.generation
    assert (gen.pad_id, gen.bos_id, gen.eos_id, gen.unk_id) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == 200


def test_targets_round_trip_exactly_and_are_short(tokenizer: TranslationTokenizer) -> None:
    test = numbers.make_pairs(np.random.default_rng(5).integers(0, 1_000_000, 300))
    for text in test.targets:
        ids = encode_target(tokenizer, text)
        assert tokenizer.generation.unk_id not in ids
        assert decode_ids(tokenizer, ids) == text
        assert len(ids) <= len(text) // 4 + 2  # subword pieces, far fewer than characters
    # Decoding stops at EOS and skips pad/bos.
    ids = encode_target(tokenizer, "zweiundvierzig")
    assert decode_ids(tokenizer, [1, *ids, 2, 7, 8]) == "zweiundvierzig"
    assert decode_ids(tokenizer, torch.tensor([*ids, 0, 0])) == "zweiundvierzig"


def test_encode_batch_pads_right_and_appends_eos(tokenizer: TranslationTokenizer) -> None:
    ids, mask = encode_batch(tokenizer, ["Forty Two", "three hundred and forty-two thousand, one"])
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    lengths = (~mask).sum(1)
    assert int(lengths[0]) < int(lengths[1]) == ids.shape[1]
    for row, n in enumerate(lengths.tolist()):
        assert ids[row, n - 1] == tokenizer.eos_id
        assert (ids[row, n:] == tokenizer.pad_id).all() and not mask[row, :n].any()
    same, _ = encode_batch(tokenizer, ["forty-two"])
    assert torch.equal(same[0], ids[0, : int(lengths[0])])


def test_encode_batch_rejects_bad_texts_clearly(tokenizer: TranslationTokenizer) -> None:
    long = " ".join(["seven hundred and seventy-seven thousand"] * 4)
    with pytest.raises(SourceTextError, match=r"text 1 .* tokens long .* at most 16 source tokens"):
        encode_batch(tokenizer, ["one", long])
    with pytest.raises(SourceTextError, match="text 0 is empty"):
        encode_batch(tokenizer, [" ,. "])
    with pytest.raises(SourceTextError, match=r"does not know: .*'4'"):
        encode_batch(tokenizer, ["42"])
    with pytest.raises(SourceTextError, match="characters"):
        encode_batch(tokenizer, ["one" * 400])
    with pytest.raises(UserError):  # SourceTextError is a UserError: the CLI/server show it as one line
        encode_batch(tokenizer, [])
    assert encode_batch(tokenizer, [long], max_len=64)[0].shape[1] > 16


def test_load_tokenizer_from_dir_and_file(tmp_path: Path, tokenizer: TranslationTokenizer) -> None:
    (tmp_path / "tokenizer.json").write_bytes(tokenizer.to_json())
    (tmp_path / "config.json").write_text(json.dumps({"generation": tokenizer.generation.model_dump()}))
    loaded = load_tokenizer(tmp_path)
    assert loaded.generation == tokenizer.generation
    assert torch.equal(encode_batch(loaded, ["forty-two"])[0], encode_batch(tokenizer, ["forty-two"])[0])
    from_file = load_tokenizer(tmp_path / "tokenizer.json")
    assert from_file.eos_id == tokenizer.eos_id
    bad = {**tokenizer.generation.model_dump(), "eos_id": 5}
    (tmp_path / "config.json").write_text(json.dumps({"generation": bad}))
    with pytest.raises(CheckpointError, match="do not match"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        load_tokenizer(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------- data


def test_splits_are_disjoint_by_number_and_seeded() -> None:
    a = numbers.make_splits(seed=3, dev_size=300, test_size=400, train_size=5000)
    assert len(a.train) == 5000 and len(a.dev) == 300 and len(a.test) == 400
    train, dev, test = (set(s.numbers.tolist()) for s in a)
    assert not (train & dev) and not (train & test) and not (dev & test)
    assert set(range(1000)) <= train and min(dev | test) >= 1000 and max(train | dev | test) < 1_000_000
    b = numbers.make_splits(seed=3, dev_size=300, test_size=400, train_size=5000)
    assert np.array_equal(a.test.numbers, b.test.numbers) and a.test.targets == b.test.targets
    c = numbers.make_splits(seed=4, dev_size=300, test_size=400, train_size=5000, with_train=False)
    assert not np.array_equal(a.test.numbers, c.test.numbers) and len(c.train) == 0
    # A bigger training split keeps dev and test fixed (the recipe only appends to train).
    d = numbers.make_splits(seed=3, dev_size=300, test_size=400, train_size=8000, with_train=False)
    assert np.array_equal(a.test.numbers, d.test.numbers)
    i = int(np.where(a.test.numbers == a.test.numbers[0])[0][0])
    assert a.test.sources[i] == numbers.english(a.test.numbers[0]) and a.test.targets[i] == numbers.german(
        a.test.numbers[0]
    )


def test_num2words_pairs() -> None:
    assert numbers.english(342) == "three hundred and forty-two"
    assert numbers.german(342) == "dreihundertzweiundvierzig"
    assert numbers.german(21342) == "einundzwanzigtausenddreihundertzweiundvierzig"
    assert numbers.german(0) == "null"


def test_heldout_texts_follow_the_recorded_recipe() -> None:
    class Config:
        dataset = numbers.dataset_config(seed=0, dev_size=50, test_size=60, train_size=2000)

    pairs = numbers.heldout_texts(Config, 5)
    test = numbers.make_splits(0, 50, 60, 2000, with_train=False).test
    assert pairs == list(zip(test.sources[:5], test.targets[:5]))
    assert len(numbers.heldout_texts(Config)) == 60
    Config.dataset = {**Config.dataset, "test_numbers_sha256": "0" * 64}
    with pytest.raises(ValueError, match="sha256"):
        numbers.heldout_texts(Config, 5)
    Config.dataset = {**Config.dataset, "name": "sklearn-digits"}
    with pytest.raises(ValueError, match="num2words"):
        numbers.heldout_texts(Config, 5)


# ------------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_cli_trains_a_tiny_translator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mmserve.checkpoints import load_model_dir
    from mmserve.cli import app
    from mmserve.models.decoding import translate

    out = tmp_path / "tiny"
    args = ["train", "translator", "--out", str(out), "--steps", "30", "--train-size", "3000",
            "--dev-size", "40", "--test-size", "40", "--eval-every", "15", "--d-model", "32", "--heads", "2",
            "--layers", "1", "--ffn-dim", "64", "--vocab-size", "200", "--batch-size", "64", "--threads", "1",
            "--beam-size", "2"]
    monkeypatch.setattr("sys.argv", ["mmserve", *args])  # what the console script would see
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test exact match greedy" in result.output
    loaded = load_model_dir(out)
    config = loaded.config
    assert config.task == "translation" and config.tokenizer == "tokenizer.json"
    assert config.generation["eos_id"] == 2 and config.dataset["test_size"] == 40
    assert config.metrics["steps"] == 30 and len(config.metrics["dev_history"]) == 2
    assert 0.0 <= config.metrics["test_exact_match_beam"] <= 1.0 and "test_chrf_greedy" in config.metrics
    card = (out / "README.md").read_text()
    assert "## Results" in card and "train translator --out" in card
    tok = load_tokenizer(out)
    (text, score), = translate(loaded.model, tok, ["forty-two"], beam_size=2)
    assert isinstance(text, str) and score <= 0.0
    with pytest.raises(SourceTextError, match="max_length"):
        translate(loaded.model, tok, ["forty-two"], max_length=10_000)
    bad = CliRunner().invoke(app, ["train", "translator", "--out", str(out), "--heads", "5"])
    assert bad.exit_code != 0 and isinstance(bad.exception, UserError) and "divisible" in str(bad.exception)
