"""Text <-> ids exactly as `fairseq-interactive` does it, for translators imported from fairseq.

fairseq-interactive turns a line into ids in three steps, and an output back in the reverse order
(fairseq 0.12: `interactive.py` encode_fn/decode_fn, `data/dictionary.py`, `data/encoders/`):

    line.strip() -> tokenizer (Moses, sacremoses) -> BPE (subword-nmt codes or a sentencepiece model)
                 -> Dictionary.encode_line: split on whitespace, unknown pieces -> <unk>, append </s>
    ids -> Dictionary.string: drop </s>, <unk> printed as "<unk>", pieces joined by spaces
        -> BPE decode ("@@ " removed / "▁" -> space) -> Moses detokenizer (target language)

The dictionary files are fairseq's `dict.LANG.txt` ("<piece> <count>" per line, optional
"#fairseq:overwrite" flag); the four special symbols <s>, <pad>, </s>, <unk> take ids 0-3 and are not
in the file. The libraries (sacremoses, subword-nmt, sentencepiece) are the ones fairseq calls, with
fairseq's arguments, so a piece boundary can never differ from what the model was trained on. They are
optional (`pip install mmserve[fairseq]`) and imported only when a model needs them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from mmserve.checkpoints.errors import CheckpointError
from mmserve.errors import UserError

from .special_ids import GenerationSpecialIds

__all__ = [
    "FAIRSEQ_TEXT_DIR",
    "BOS_WORD",
    "PAD_WORD",
    "EOS_WORD",
    "UNK_WORD",
    "FairseqDictionary",
    "FairseqTextSettings",
    "FairseqTextPipeline",
    "load_fairseq_text",
]

FAIRSEQ_TEXT_DIR = "fairseq-text"
"""Model-directory folder with dict.src.txt, dict.tgt.txt and the BPE file; config.json["tokenizer"]."""
SETTINGS_NAME = "settings.json"
SOURCE_DICT_NAME = "dict.src.txt"
TARGET_DICT_NAME = "dict.tgt.txt"
BPE_CODES_NAME = "bpe.codes"
SENTENCEPIECE_NAME = "sentencepiece.model"

BOS_WORD, PAD_WORD, EOS_WORD, UNK_WORD = "<s>", "<pad>", "</s>", "<unk>"
_SPACES = re.compile(r"\s+")  # fairseq.tokenizer.SPACE_NORMALIZER
_OVERWRITE = "#fairseq:overwrite"


class FairseqDictionary:
    """fairseq's `Dictionary` as read from dict.txt: special symbols at 0-3, then the file's pieces."""

    def __init__(self, symbols: Sequence[str], indices: dict[str, int]) -> None:
        self.symbols = list(symbols)
        self.indices = dict(indices)
        # Fixed at 0-3 as fairseq stores them at construction, even if the file overwrites a special word.
        self.bos, self.pad, self.eos, self.unk = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.symbols)

    @classmethod
    def load(cls, path: Path | str) -> "FairseqDictionary":
        """Parse a fairseq dict.txt (`Dictionary.add_from_file`), refusing what fairseq refuses."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CheckpointError(path, "not found (expected a fairseq dictionary, dict.LANG.txt)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(path, f"cannot be read as a UTF-8 fairseq dictionary: {exc}") from exc
        symbols = [BOS_WORD, PAD_WORD, EOS_WORD, UNK_WORD]
        indices = {w: i for i, w in enumerate(symbols)}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.rstrip()
            if not line:
                continue
            try:
                word, count = line.rsplit(" ", 1)
                overwrite = count == _OVERWRITE
                if overwrite:
                    word, count = word.rsplit(" ", 1)
                int(count)
            except ValueError:
                raise CheckpointError(
                    path, f"line {number} is not '<piece> <count> [#fairseq:overwrite]': {raw[:60]!r}"
                ) from None
            if word in indices and not overwrite:
                raise CheckpointError(
                    path, f"line {number}: duplicate piece {word!r} (fairseq refuses it without #fairseq:overwrite)"
                )
            indices[word] = len(symbols)  # an overwrite appends a new entry and re-points the piece to it
            symbols.append(word)
        if len(symbols) == 4:
            raise CheckpointError(path, "holds no pieces: not a fairseq dictionary")
        return cls(symbols, indices)

    def encode_line(self, line: str) -> list[int]:
        """Ids of space-separated pieces, unknown ones as <unk>, then </s> (`encode_line`, append_eos)."""
        words = _SPACES.sub(" ", line).strip().split()
        return [self.indices.get(w, self.unk) for w in words] + [self.eos]

    def string(self, ids: Sequence[int]) -> str:
        """`Dictionary.string` as fairseq-interactive calls it: </s> dropped, <unk> printed as '<unk>'."""
        return " ".join(UNK_WORD if i == self.unk else self.symbols[i] for i in ids if i != self.eos)


class FairseqTextSettings(BaseModel):
    """fairseq-text/settings.json: the pre/post-processing fairseq-interactive was run with."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: Literal["none", "moses"] = "none"
    bpe: Literal["none", "subword-nmt", "sentencepiece"] = "none"
    source_lang: str = "en"
    target_lang: str = "en"
    bpe_separator: str = "@@"
    moses_no_dash_splits: bool = False
    moses_no_escape: bool = False


@dataclass
class FairseqTextPipeline(GenerationSpecialIds):
    """fairseq-interactive's encode_fn + Dictionary.encode_line, and the way back; plus the model's
    generation settings (`mmserve.tasks.translation.GenerationConfig`), as `TranslationTokenizer` has."""

    source: FairseqDictionary
    target: FairseqDictionary
    settings: FairseqTextSettings
    generation: Any  # GenerationConfig (imported lazily: translation.py imports this module)
    _moses: Any = field(default=None, repr=False)
    _bpe: Any = field(default=None, repr=False)

    @property
    def vocab_size(self) -> int:
        return len(self.target)

    def encode_text(self, text: str) -> list[int]:
        """Source ids of one line (</s> appended), exactly as fairseq-interactive feeds the encoder."""
        line = text.strip()
        if self._moses is not None:
            tok, _ = self._moses
            line = tok.tokenize(
                line,
                aggressive_dash_splits=not self.settings.moses_no_dash_splits,
                return_str=True,
                escape=not self.settings.moses_no_escape,
            )
        if self.settings.bpe == "subword-nmt":
            line = self._bpe.process_line(line)
        elif self.settings.bpe == "sentencepiece":
            line = " ".join(self._bpe.Encode(line, out_type=str))  # fairseq: no sampling
        return self.source.encode_line(line)

    def decode(self, ids: Sequence[int]) -> str:
        """Output text of generated ids (fairseq-interactive's detokenised hypothesis, 'D-' line)."""
        text = self.target.string([int(i) for i in ids])
        if self.settings.bpe == "subword-nmt":
            text = (text + " ").replace(self.settings.bpe_separator + " ", "").rstrip()
        elif self.settings.bpe == "sentencepiece":
            text = text.replace(" ", "").replace("\u2581", " ").strip()
        if self._moses is not None:
            _, detok = self._moses
            text = detok.detokenize(text.split())
        return text

    def piece_text(self, ids: Sequence[int]) -> str:
        """The pieces as fairseq prints them before BPE decoding ('H-' line with --bpe unset)."""
        return self.target.string([int(i) for i in ids])


def _need(module: str, feature: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{feature} needs the Python package {module!r}: pip install 'mmserve[fairseq]'"
        ) from None


def build_pipeline(
    source: FairseqDictionary,
    target: FairseqDictionary,
    settings: FairseqTextSettings,
    generation: Any,
    bpe_file: Optional[Path],
) -> FairseqTextPipeline:
    """Assemble the pipeline, loading the tokenizer/BPE libraries the settings name."""
    moses = None
    if settings.tokenizer == "moses":
        sacremoses = _need("sacremoses", "--tokenizer moses")
        moses = (sacremoses.MosesTokenizer(settings.source_lang), sacremoses.MosesDetokenizer(settings.target_lang))
    bpe = None
    if settings.bpe != "none":
        if bpe_file is None or not bpe_file.is_file():
            raise CheckpointError(bpe_file or Path("."), f"missing: --bpe {settings.bpe} needs its file")
    if settings.bpe == "subword-nmt":
        apply_bpe = _need("subword_nmt.apply_bpe", "--bpe subword-nmt")
        try:
            with open(bpe_file, encoding="utf-8") as codes:
                bpe = apply_bpe.BPE(codes, -1, settings.bpe_separator, None, None)
        except Exception as exc:  # subword-nmt raises plain errors on malformed codes
            raise CheckpointError(bpe_file, f"not a subword-nmt codes file: {exc}") from exc
    elif settings.bpe == "sentencepiece":
        spm = _need("sentencepiece", "--bpe sentencepiece")
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(str(bpe_file))
        except Exception as exc:  # OSError / RuntimeError from the C++ loader
            raise CheckpointError(bpe_file, f"not a sentencepiece model: {exc}") from exc
        bpe = processor
    return FairseqTextPipeline(source, target, settings, generation, moses, bpe)


def bpe_file_name(settings: FairseqTextSettings) -> Optional[str]:
    """Name of the BPE file inside fairseq-text/ for these settings (None without BPE)."""
    return {"subword-nmt": BPE_CODES_NAME, "sentencepiece": SENTENCEPIECE_NAME}.get(settings.bpe)


def load_fairseq_text(model_dir: Path, generation: Any) -> FairseqTextPipeline:
    """The pipeline stored in a model (or export) directory's fairseq-text/ folder."""
    folder = Path(model_dir) / FAIRSEQ_TEXT_DIR
    settings_path = folder / SETTINGS_NAME
    try:
        settings = FairseqTextSettings.model_validate(json.loads(settings_path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(settings_path, "missing: an imported fairseq translator needs it") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise CheckpointError(settings_path, f"invalid fairseq text settings: {exc}") from exc
    source = FairseqDictionary.load(folder / SOURCE_DICT_NAME)
    target = FairseqDictionary.load(folder / TARGET_DICT_NAME)
    name = bpe_file_name(settings)
    return build_pipeline(source, target, settings, generation, folder / name if name else None)
