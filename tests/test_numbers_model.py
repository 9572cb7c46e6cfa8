"""The bundled numbers-en-de translator: verified load, exact translations of held-out test numbers, and
a recomputation of its reported test exact match on a sample of the test split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmserve.checkpoints import CheckpointError, load_model_dir
from mmserve.data.numbers import heldout_texts
from mmserve.models import MultiMaxTranslator
from mmserve.models.decoding import translate
from mmserve.tasks.translation import SourceTextError, encode_batch, load_tokenizer

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "numbers-en-de"


@pytest.fixture(scope="module")
def bundled():
    loaded = load_model_dir(MODEL_DIR)  # verifies every sha256 in manifest.json
    return loaded, load_tokenizer(MODEL_DIR)


def test_bundled_config_card_and_size(bundled) -> None:
    loaded, tok = bundled
    config = loaded.config
    assert config.task == "translation" and isinstance(loaded.model, MultiMaxTranslator)
    assert loaded.architecture.attention_fn == "multimax" and loaded.architecture.head_fn == "multimax"
    files = set(loaded.manifest["files"])
    assert {"model.safetensors", "tokenizer.json", "config.json", "README.md"} <= files
    m = config.metrics
    assert m["test_exact_match_greedy"] >= 0.95 and m["test_exact_match_beam"] >= 0.95
    assert m["test_total"] == config.dataset["test_size"] == 2000
    card = (MODEL_DIR / "README.md").read_text()
    assert config.source["command"] in card and "train translator" in config.source["command"]
    for kind in ("greedy", "beam"):
        assert f"{m[f'test_correct_{kind}']}/{m['test_total']}" in card
    assert (MODEL_DIR / "model.safetensors").stat().st_size < 10 * 2**20
    assert tok.generation.model_dump() == config.generation


def test_tampered_tokenizer_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "numbers-en-de"
    shutil.copytree(MODEL_DIR, copy)
    text = (copy / "tokenizer.json").read_text()
    (copy / "tokenizer.json").write_text(text.replace("hundert", "hunderd", 1))
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_model_dir(copy)


# Test-split pairs of the bundled recipe (seed 0), written out so that a change of split shows here:
# a reordering ("twenty-one" -> "einundzwanzig") and num2words' "eins" before "tausend" after a hundred.
HELDOUT = [
    ("twenty-one thousand and nine", "einundzwanzigtausendneun"),
    ("two hundred and one thousand and fifty-seven", "zweihunderteinstausendsiebenundfünfzig"),
]


def test_translates_heldout_test_numbers_exactly(bundled) -> None:
    loaded, tok = bundled
    test_split = heldout_texts(loaded.config)
    assert all(pair in test_split for pair in HELDOUT)
    pairs = HELDOUT + test_split[:8]
    sources, references = [s for s, _ in pairs], [r for _, r in pairs]
    for beam in (1, 4):
        out = translate(loaded.model, tok, sources, beam_size=beam)
        assert [text for text, _ in out] == references
        assert all(score < 0 for _, score in out)
    # How a person would type the same numbers reaches the same translation (shared normalisation).
    typed = [s.replace(",", "").replace("-", " ").title() + "." for s in sources[:4]]
    assert [t for t, _ in translate(loaded.model, tok, typed, beam_size=1)] == references[:4]


def test_out_of_domain_words_are_refused_not_translated(bundled) -> None:
    """'hello world' is spelled with letters the BPE vocabulary knows; without the word check the model
    turned it into a confident-looking German number. Every held-out source passes the check."""
    loaded, tok = bundled
    assert "hundred" in tok.generation.source_words and "hello" not in tok.generation.source_words
    with pytest.raises(SourceTextError, match=r"text 1 .*not trained on: 'hello', 'world'"):
        encode_batch(tok, ["forty-two", "hello world"])
    with pytest.raises(SourceTextError, match="'fourty'"):  # a misspelling is refused, not guessed at
        encode_batch(tok, ["fourty-two"])
    sources = [s for s, _ in heldout_texts(loaded.config)]
    assert encode_batch(tok, sources)[0].shape[0] == len(sources)


@pytest.mark.slow
def test_recomputed_exact_match_on_a_test_sample_matches_the_report(bundled) -> None:
    loaded, tok = bundled
    m = loaded.config.metrics
    pairs = heldout_texts(loaded.config, 1000)
    sources, references = [s for s, _ in pairs], [r for _, r in pairs]
    with torch.inference_mode():
        greedy = translate(loaded.model, tok, sources, beam_size=1)
        beam = translate(loaded.model, tok, sources[:300], beam_size=4)
    greedy_errors = sum(t != r for (t, _), r in zip(greedy, references))
    beam_errors = sum(t != r for (t, _), r in zip(beam, references))
    # The sample is part of the test split: it cannot hold more errors than the whole split reported
    # (one of slack for float differences across thread counts), and its rate is close to the report.
    assert greedy_errors <= m["test_total"] - m["test_correct_greedy"] + 1
    assert beam_errors <= m["test_total"] - m["test_correct_beam"] + 1
    assert abs((1 - greedy_errors / len(references)) - m["test_exact_match_greedy"]) <= 0.01
    assert 1 - greedy_errors / len(references) >= 0.95 and 1 - beam_errors / 300 >= 0.95
