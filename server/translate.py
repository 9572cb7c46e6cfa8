"""/translate behind the HTTP layer: texts -> validated, tokenised jobs -> continuous batcher ->
detokenised (text, score). Tokenisation and detokenisation are `mmserve.tasks.translation`, decoding
settings (special ids, default beam size and max length, length penalty) the model's config.json."""

from __future__ import annotations

import math
import sys
from typing import Any, Optional, Sequence

from mmserve.models.decoding import search_rules
from mmserve.tasks.translation import SourceTextError, decode_ids, encode_sources

from .backends import TranslatorBackend
from .batching import BatchPolicy
from .continuous import ContinuousBatcher, TranslationJob
from .errors import ApiError
from .metrics import Metrics
from .settings import ServerSettings

__all__ = ["ServedTranslator"]


class ServedTranslator:
    """One translation model: backend (a step-API stepper + tokenizer), limits and its batcher, which
    decodes in `settings.translator_threads().workers` lanes (continuous.py).

    In an HTTP frontend process `backend` only needs `name`, `config` and `tokenizer` and `batcher`
    forwards jobs to the engine process (see ServedClassifier)."""

    task = "translation"

    def __init__(self, backend: TranslatorBackend, settings: ServerSettings, metrics: Metrics,
                 batcher: Any = None) -> None:
        self.backend = backend
        self.name = backend.name
        self.tokenizer = backend.tokenizer
        self.generation = self.tokenizer.generation
        limits = settings.limits
        self.max_texts = limits.max_texts
        self.max_chars = min(limits.max_text_chars, self.generation.max_source_chars)
        self.max_source_tokens = min(limits.max_source_tokens, self.generation.max_source_tokens)
        self.max_beam = limits.max_beam_size
        self.max_length_limit = min(limits.max_output_tokens, self.generation.max_length_limit)
        policy = BatchPolicy(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
            max_queue_size=settings.max_queue_size,
            queue_timeout_s=settings.queue_timeout_s,
        )
        threads = settings.translator_threads()
        self.decode_lanes, self.lane_threads = threads.workers, threads.intra_op_threads
        if batcher is not None:
            self.batcher = batcher
            return
        self.batcher = ContinuousBatcher(
            self.name, backend.stepper, self.generation.bos_id, self.generation.eos_id, self.generation.pad_id,
            self.generation.length_penalty, policy, settings.max_batch_tokens,
            device=getattr(backend, "device", "cpu"), metrics=metrics, rules=search_rules(self.generation),
            lanes=self.decode_lanes,
        )

    def prepare(self, texts: Sequence[str], beam_size: Optional[int], max_length: Optional[int]) -> list[TranslationJob]:
        """Validate a request against the limits and tokenise it (422 naming the offending text)."""
        if len(texts) > self.max_texts:
            raise ApiError(422, "too_many_items", f"{len(texts)} texts, more than the limit of {self.max_texts}")
        beam = self.generation.beam_size if beam_size is None else beam_size
        if not 1 <= beam <= self.max_beam:
            raise ApiError(422, "invalid_request", f"beam_size must be between 1 and {self.max_beam}, got {beam}")
        length = min(self.generation.max_length, self.max_length_limit) if max_length is None else max_length
        if not 1 <= length <= self.max_length_limit:
            raise ApiError(422, "invalid_request",
                           f"max_length must be between 1 and {self.max_length_limit}, got {length}")
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # JSON "\ud800" decodes to a lone surrogate, which no tokenizer takes
                raise ApiError(422, "invalid_text", f"texts[{i}] is not valid Unicode (lone surrogate)") from None
            if len(text) > self.max_chars:
                raise ApiError(422, "text_too_long",
                               f"texts[{i}] has {len(text)} characters, more than the limit of {self.max_chars}")
        try:
            sources = encode_sources(self.tokenizer, list(texts), self.max_source_tokens)
        except SourceTextError as exc:
            raise ApiError(422, "invalid_text", str(exc)) from None
        if max_length is None and self.generation.max_len_b is not None:
            # fairseq's max_len_a * src_len + max_len_b, per sentence (src_len = its tokens, EOS included)
            return [TranslationJob(tuple(ids), beam, min(self.generation.max_length_for(len(ids)), self.max_length_limit))
                    for ids in sources]
        return [TranslationJob(tuple(ids), beam, length) for ids in sources]

    async def translate(self, jobs: list[TranslationJob], request_id: str) -> list[tuple[str, float]]:
        results = await self.batcher.submit(jobs, request_id=request_id)
        # A score is -inf only if no hypothesis ever had a finite log-prob (impossible with a real
        # vocabulary); JSON has no -inf, so such a result is reported with the lowest float instead.
        return [(decode_ids(self.tokenizer, tokens), score if math.isfinite(score) else -sys.float_info.max)
                for tokens, score in results]

    def model_info(self) -> dict[str, Any]:
        g = self.generation
        return {"extra": {"beam_size_default": g.beam_size, "max_length_default": g.max_length,
                          "max_length_limit": self.max_length_limit, "max_source_tokens": self.max_source_tokens,
                          "length_penalty": g.length_penalty, "continuous_batching": True,
                          "decode_lanes": self.decode_lanes, "intra_op_threads_per_lane": self.lane_threads}}
