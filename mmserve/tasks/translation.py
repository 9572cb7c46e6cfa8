"""Text <-> ids for the translator, shared by training, parity checks and serving.

- `normalize_source`: the one normalisation every English source goes through (training data too),
  so "Twenty One Thousand,  three hundred" and num2words' "twenty-one thousand, three hundred" reach
  the model as the same string.
- The vocabulary is a BPE model from the `tokenizers` library (saved as tokenizer.json in the model
  directory), trained on the training split's normalised sources and German targets. Number words are
  built from a few dozen morphemes ("drei", "hundert", "und", "zwanzig", "tausend"; "seventy", "-",
  "thousand"), which BPE recovers, so a German number of up to ~70 characters is ~6-12 tokens: far
  fewer decoder steps than characters (faster training, faster beam search) while every test number
  is still spelled from pieces seen in training. Pieces carry SentencePiece-style "▁" word starts
  (Metaspace), so decoding is exact: `decode_ids(encode_target(t)) == t`.
- Special ids (pad, bos, eos, unk) and the default decoding settings live in config.json["generation"]
  (`GenerationConfig`); `load_tokenizer(model_dir)` returns both together, which is all `translate`
  needs besides the stepper.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from mmserve.errors import UserError

from .special_ids import GenerationSpecialIds

__all__ = [
    "TOKENIZER_NAME",
    "SPECIAL_TOKENS",
    "GenerationConfig",
    "TranslationTokenizer",
    "SourceTextError",
    "normalize_source",
    "train_tokenizer",
    "special_ids",
    "load_tokenizer",
    "encode_batch",
    "encode_sources",
    "pad_sources",
    "source_vocabulary",
    "encode_target",
    "decode_ids",
]

TOKENIZER_NAME = "tokenizer.json"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
"""In this order, so their ids are 0, 1, 2, 3."""


class SourceTextError(UserError):
    """A source text the translator cannot take (empty, too long, characters it never saw)."""


class GenerationConfig(BaseModel):
    """config.json["generation"]: special ids, input limits and default decoding settings."""

    model_config = ConfigDict(extra="forbid")

    pad_id: int = Field(ge=0)
    bos_id: int = Field(ge=0)
    eos_id: int = Field(ge=0)
    unk_id: int = Field(ge=0)
    max_source_tokens: int = Field(ge=2, description="source tokens including the appended EOS")
    max_length: int = Field(ge=1, description="default most target tokens (EOS included)")
    max_length_limit: int = Field(ge=1, description="largest max_length the model's positions allow")
    beam_size: int = Field(4, ge=1)
    length_penalty: float = Field(
        0.6, description="GNMT alpha: scores are sum(log p) / ((5 + len) / 6) ** alpha"
    )
    max_source_chars: int = Field(
        1000, ge=1, description="texts longer than this are rejected before tokenising"
    )
    search: Literal["mmserve", "fairseq"] = Field(
        "mmserve",
        description="'fairseq': fairseq-generate's rules (scores / len ** length_penalty, EOS forced at "
        "max_length, min_length, unk_penalty, a sentence ends once beam_size hypotheses ended); "
        "'mmserve': the GNMT penalty and early stopping described in mmserve.models.decoding",
    )
    min_length: int = Field(0, ge=0, description="EOS is banned before this many tokens (fairseq --min-len)")
    unk_penalty: float = Field(0.0, description="subtracted from <unk>'s log-prob (fairseq --unkpen)")
    max_len_a: float = Field(0.0, ge=0, description="fairseq --max-len-a (with max_len_b)")
    max_len_b: Optional[int] = Field(
        None, ge=0,
        description="when set, a source of n tokens (EOS included) gets min(int(a*n + b), "
        "max_length_limit - 1) tokens plus EOS, as fairseq-generate's max_len_a/max_len_b",
    )
    source_words: Optional[list[str]] = Field(
        None,
        description="the words (split at spaces and hyphens, after normalisation) of the training sources; "
        "when set, a text with any other word is refused: a model of a closed domain (number words) would "
        "otherwise turn 'hello world' into a confident-looking number instead of saying it cannot",
    )

    @model_serializer(mode="wrap")
    def _omit_default_search_settings(self, handler):
        """The fairseq-only settings are written only when set, so a config.json written before they
        existed (the bundled translator's) reads back and dumps to exactly what it holds."""
        data = handler(self)
        for name in _SEARCH_FIELDS:
            if name in data and data[name] == type(self).model_fields[name].default:
                del data[name]
        return data

    def max_length_for(self, source_tokens: int) -> int:
        """Default max_length (tokens, EOS included) for a source of that many tokens (EOS included)."""
        if self.max_len_b is None:
            return self.max_length
        return min(int(self.max_len_a * source_tokens + self.max_len_b), self.max_length_limit - 1) + 1

    @cached_property
    def known_source_words(self) -> Optional[frozenset[str]]:
        """`source_words` as a set, built once per model rather than once per request."""
        return None if self.source_words is None else frozenset(self.source_words)


_SEARCH_FIELDS = ("search", "min_length", "unk_penalty", "max_len_a", "max_len_b")

# ------------------------------------------------------------------------------------ normalisation

_DASHES = re.compile("[\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d]")
_TENS = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
_UNITS = "one|two|three|four|five|six|seven|eight|nine"
_TENS_UNITS = re.compile(rf"\b({_TENS})\s+({_UNITS})\b")
_SPACED_HYPHEN = re.compile(r"\s*-\s*")
_SPACES = re.compile(r"\s+")


def normalize_source(text: str) -> str:
    """Lowercase, unify dashes to "-" with no spaces around them, write compound tens with a hyphen
    ("twenty one" -> "twenty-one", as num2words does), drop commas and trailing . ! ?, collapse
    whitespace and trim. Training sources go through this too, so the model only ever sees this form.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _DASHES.sub("-", text)
    text = text.replace(",", " ")
    text = _SPACES.sub(" ", text).strip()
    text = text.rstrip(".!?").strip()
    text = _SPACED_HYPHEN.sub("-", text)
    text = _TENS_UNITS.sub(r"\1-\2", text)
    return text


_WORD_SEPARATORS = re.compile(r"[ -]")


def source_words(normalised: str) -> list[str]:
    """The words of a normalised source: split at spaces and hyphens ("seventy-two" -> seventy, two)."""
    return [w for w in _WORD_SEPARATORS.split(normalised) if w]


def source_vocabulary(normalised_sources: Iterable[str]) -> list[str]:
    """Sorted distinct words of the training sources, for GenerationConfig.source_words."""
    return sorted({w for text in normalised_sources for w in source_words(text)})


# ------------------------------------------------------------------------------------------ tokenizer


@dataclass
class TranslationTokenizer(GenerationSpecialIds):
    """A `tokenizers.Tokenizer` plus the model's generation settings (special ids, limits, defaults)."""

    tokenizer: "tokenizers.Tokenizer"  # noqa: F821
    generation: GenerationConfig

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def to_json(self) -> bytes:
        """tokenizer.json content."""
        return self.tokenizer.to_str(pretty=True).encode()


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A BPE `tokenizers.Tokenizer` on `texts` (already normalised sources and raw targets).

    Metaspace pre-tokenisation marks word starts with "▁" so decoding restores spaces exactly; the
    special tokens come first (ids 0..3). Deterministic for the same texts and tokenizers version.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def special_ids(tokenizer) -> dict[str, int]:
    """{pad_id, bos_id, eos_id, unk_id} of a tokenizers.Tokenizer (error if one is missing)."""
    ids = {}
    for key, token in (("pad_id", PAD), ("bos_id", BOS), ("eos_id", EOS), ("unk_id", UNK)):
        idx = tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"tokenizer has no {token} token")
        ids[key] = idx
    return ids


def load_tokenizer(model_dir_or_file: Path | str) -> TranslationTokenizer:
    """The tokenizer of a model (or export) directory, with config.json["generation"].

    Given a tokenizer.json file instead, the special ids come from its special tokens and the
    decoding settings are defaults.
    """
    from tokenizers import Tokenizer

    from mmserve.checkpoints import CheckpointError

    path = Path(model_dir_or_file)
    if path.is_dir():
        fairseq = _load_fairseq_tokenizer(path)
        if fairseq is not None:
            return fairseq
    file = path / TOKENIZER_NAME if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(file, "missing: a translation model needs its tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(file))
        ids = special_ids(tok)
    except Exception as exc:  # the tokenizers library raises plain Exceptions for malformed files
        raise CheckpointError(file, f"not a usable tokenizers file: {exc}") from exc
    if not path.is_dir():
        generation = GenerationConfig(**ids, max_source_tokens=64, max_length=64, max_length_limit=64)
        return TranslationTokenizer(tok, generation)
    config_path = path / "config.json"
    _, generation = _read_generation(config_path)
    mismatched = {k: (v, getattr(generation, k)) for k, v in ids.items() if getattr(generation, k) != v}
    if mismatched:
        raise CheckpointError(
            config_path, f"generation ids do not match tokenizer.json's special tokens: {mismatched}"
        )
    return TranslationTokenizer(tok, generation)


def _read_generation(config_path: Path) -> tuple[dict, GenerationConfig]:
    from mmserve.checkpoints import CheckpointError

    try:
        data = json.loads(config_path.read_text())
        return data, GenerationConfig.model_validate(data.get("generation") or {})
    except FileNotFoundError as exc:
        raise CheckpointError(config_path, "missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise CheckpointError(config_path, f"invalid generation settings: {exc}") from exc


def _load_fairseq_tokenizer(directory: Path):
    """A model imported from fairseq (config.json["tokenizer"] == "fairseq-text"), else None."""
    from .fairseq_text import FAIRSEQ_TEXT_DIR, load_fairseq_text

    config_path = directory / "config.json"
    if not (directory / FAIRSEQ_TEXT_DIR).is_dir():
        return None
    data, generation = _read_generation(config_path)
    if data.get("tokenizer") != FAIRSEQ_TEXT_DIR:
        return None
    return load_fairseq_text(directory, generation)


def _is_fairseq(tokenizer) -> bool:
    from .fairseq_text import FairseqTextPipeline

    return isinstance(tokenizer, FairseqTextPipeline)


# ----------------------------------------------------------------------------------- text <-> ids


def _describe(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def encode_batch(
    tokenizer: TranslationTokenizer, texts: Sequence[str], max_len: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise and tokenise sources, append EOS, right-pad: (src_ids [B,S], src_pad_mask [B,S], True = pad).

    Raises SourceTextError as `encode_sources` does.
    """
    return pad_sources(encode_sources(tokenizer, texts, max_len), tokenizer.generation.pad_id)


def encode_sources(
    tokenizer: TranslationTokenizer, texts: Sequence[str], max_len: Optional[int] = None
) -> list[list[int]]:
    """Normalise and tokenise sources and append EOS: one id list per text, unpadded (what the
    server's continuous batcher queues; it pads when sentences join a decode).

    Raises SourceTextError (a UserError) naming the text when one is empty, longer than `max_len`
    tokens (default: the model's max_source_tokens, EOS included), or has characters or words the
    model does not know.
    """
    gen = tokenizer.generation
    max_len = gen.max_source_tokens if max_len is None else max_len
    if not texts:
        raise SourceTextError("no texts to translate")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise SourceTextError(f"text {i} is not a string ({type(text).__name__})")
        if len(text) > gen.max_source_chars:
            raise SourceTextError(
                f"text {i} has {len(text)} characters; this model accepts at most {gen.max_source_chars}"
            )
    if _is_fairseq(tokenizer):
        return _encode_fairseq(tokenizer, texts, max_len)
    normalised = [normalize_source(t) for t in texts]
    known = gen.known_source_words
    if known is not None:
        for i, (text, norm) in enumerate(zip(texts, normalised)):
            unknown = sorted({w for w in source_words(norm) if w not in known})
            if unknown:
                raise SourceTextError(
                    f"text {i} ({_describe(text)}) has words this model was not trained on: "
                    f"{', '.join(map(repr, unknown[:10]))} (it translates English number words, e.g. 'forty-two')"
                )
    encodings = tokenizer.tokenizer.encode_batch(normalised, add_special_tokens=False)
    rows = []
    for i, (text, norm, enc) in enumerate(zip(texts, normalised, encodings)):
        ids = list(enc.ids)
        if not ids:
            raise SourceTextError(f"text {i} is empty after normalisation ({_describe(text)})")
        if gen.unk_id in ids:
            unknown = sorted({norm[a:b].strip() or norm[a:b] for (a, b), idx in zip(enc.offsets, ids)
                              if idx == gen.unk_id})
            raise SourceTextError(
                f"text {i} ({_describe(text)}) has characters this model's vocabulary does not know: "
                f"{', '.join(map(repr, unknown))} (it translates English number words, e.g. 'forty-two')"
            )
        ids.append(gen.eos_id)
        if len(ids) > max_len:
            raise SourceTextError(
                f"text {i} ({_describe(text)}) is {len(ids)} tokens long after normalisation; "
                f"this model accepts at most {max_len} source tokens (EOS included)"
            )
        rows.append(ids)
    return rows


def _encode_fairseq(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """fairseq-interactive's encoding (unknown pieces become <unk>, as fairseq does, not an error)."""
    rows = []
    for i, text in enumerate(texts):
        ids = tokenizer.encode_text(text)
        if len(ids) <= 1:
            raise SourceTextError(f"text {i} is empty")
        if len(ids) > max_len:
            raise SourceTextError(
                f"text {i} ({_describe(text)}) is {len(ids)} tokens long after tokenisation; "
                f"this model accepts at most {max_len} source tokens (EOS included)"
            )
        rows.append(ids)
    return rows


def pad_sources(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into (src_ids [B,S], src_pad_mask [B,S], True = pad)."""
    width = max(len(r) for r in rows)
    src_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, ids in enumerate(rows):
        src_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    src_pad_mask = torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)
    return src_ids, src_pad_mask


def encode_target(tokenizer: TranslationTokenizer, text: str) -> list[int]:
    """Target-side ids of a German reference (no normalisation, no BOS/EOS)."""
    return list(tokenizer.tokenizer.encode(text, add_special_tokens=False).ids)


def decode_ids(tokenizer: TranslationTokenizer, ids: Sequence[int] | torch.Tensor) -> str:
    """Text of generated ids: stops at the first EOS, drops pad/bos/unk, joins pieces exactly."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if _is_fairseq(tokenizer):
        return tokenizer.decode(_until_eos(ids, tokenizer.generation.eos_id))
    gen = tokenizer.generation
    kept = []
    for idx in ids:
        if idx == gen.eos_id:
            break
        if idx not in (gen.pad_id, gen.bos_id, gen.unk_id):
            kept.append(int(idx))
    return tokenizer.tokenizer.decode(kept, skip_special_tokens=True)


def _until_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    out = []
    for idx in ids:
        if idx == eos_id:
            break
        out.append(int(idx))
    return out
