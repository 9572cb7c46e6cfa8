"""fairseq-interactive's text pipeline for imported translators: dictionaries (ids 0-3 special, the
overwrite flag, duplicates refused), Moses + subword-nmt codes learned here, a sentencepiece model
trained here, unknown pieces -> <unk>, and the way back to text."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mmserve.checkpoints import CheckpointError
from mmserve.tasks.fairseq_text import FairseqDictionary, FairseqTextSettings, build_pipeline
from mmserve.tasks.translation import GenerationConfig

pytest.importorskip("sacremoses", reason="the fairseq extra (sacremoses) is part of the dev install")

CORPUS = [
    "Hello, world! The world is large.",
    "The cat sat on the mat, and the cat slept.",
    "Hello again: the large cat is on the large mat.",
    "Worlds of cats and mats.",
] * 3
GEN = GenerationConfig(pad_id=1, bos_id=2, eos_id=2, unk_id=3, max_source_tokens=64, max_length=10, max_length_limit=64)


def _dictionary(path: Path, lines: list[str]) -> FairseqDictionary:
    counts: dict[str, int] = {}
    for line in lines:
        for piece in line.split():
            counts[piece] = counts.get(piece, 0) + 1
    path.write_text("".join(f"{p} {c}\n" for p, c in sorted(counts.items(), key=lambda kv: -kv[1])), encoding="utf-8")
    return FairseqDictionary.load(path)


def test_dictionary_layout_overwrite_and_refusals(tmp_path) -> None:
    path = tmp_path / "dict.txt"
    path.write_text("the 10\nHello 4\n<unk> 3 #fairseq:overwrite\n", encoding="utf-8")
    d = FairseqDictionary.load(path)
    assert (d.bos, d.pad, d.eos, d.unk) == (0, 1, 2, 3) and d.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert d.indices["the"] == 4 and d.indices["Hello"] == 5 and len(d) == 7
    assert d.indices["<unk>"] == 6  # fairseq's overwrite appends and re-points the word
    assert d.encode_line("  the  Hello\tnever ") == [4, 5, 3, 2]
    assert d.string([4, 3, 5, 2]) == "the <unk> Hello"
    path.write_text("the 10\nthe 3\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="line 2: duplicate piece 'the'"):
        FairseqDictionary.load(path)
    path.write_text("the ten\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="line 1 is not"):
        FairseqDictionary.load(path)


def test_moses_and_subword_nmt_as_fairseq_interactive(tmp_path) -> None:
    from sacremoses import MosesTokenizer
    from subword_nmt.apply_bpe import BPE
    from subword_nmt.learn_bpe import learn_bpe

    moses = MosesTokenizer("en")
    tokenised = [moses.tokenize(line, aggressive_dash_splits=True, return_str=True, escape=True) for line in CORPUS]
    codes = io.StringIO()
    learn_bpe(io.StringIO("\n".join(tokenised)), codes, 25, min_frequency=2)
    codes_path = tmp_path / "bpe.codes"
    codes_path.write_text(codes.getvalue(), encoding="utf-8")
    with open(codes_path, encoding="utf-8") as f:
        bpe = BPE(f)
    d = _dictionary(tmp_path / "dict.en.txt", [bpe.process_line(t) for t in tokenised])
    settings = FairseqTextSettings(tokenizer="moses", bpe="subword-nmt", source_lang="en", target_lang="en")
    pipe = build_pipeline(d, d, settings, GEN, codes_path)

    ids = pipe.encode_text("  Hello, world!  ")
    assert ids[-1] == d.eos and d.unk not in ids
    pieces = pipe.piece_text(ids)
    assert pieces.replace("@@ ", "") == "Hello , world !"  # Moses split the punctuation
    assert "@@" in " ".join(d.symbols) and pipe.decode(ids) == "Hello, world!"
    unknown = pipe.encode_text("Hello §")
    assert d.unk in unknown  # a piece outside the dictionary is <unk>, as in fairseq
    assert pipe.decode(unknown).endswith("<unk>")


def test_sentencepiece_as_fairseq_interactive(tmp_path) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=60,
                                   model_type="bpe", character_coverage=1.0, hard_vocab_limit=False)
    model_path = tmp_path / "sentencepiece.model"
    model_path.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    d = _dictionary(tmp_path / "dict.txt", [" ".join(sp.EncodeAsPieces(line)) for line in CORPUS])
    pipe = build_pipeline(d, d, FairseqTextSettings(bpe="sentencepiece"), GEN, model_path)
    ids = pipe.encode_text("the cat sat on the mat")
    assert d.unk not in ids and pipe.piece_text(ids).startswith("\u2581")
    assert pipe.decode(ids) == "the cat sat on the mat"
    assert d.unk in pipe.encode_text("the cat §")


def test_missing_bpe_file_is_refused(tmp_path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("a 1\n", encoding="utf-8")
    d = FairseqDictionary.load(path)
    with pytest.raises(CheckpointError, match="missing"):
        build_pipeline(d, d, FairseqTextSettings(bpe="subword-nmt"), GEN, tmp_path / "nope.codes")
