"""The special token ids every translator text pipeline exposes, read from its generation settings.

Both text pipelines (`translation.TranslationTokenizer` for the project's BPE, `fairseq_text.FairseqTextPipeline`
for imported fairseq models) keep pad/bos/eos in their `GenerationConfig`, so decoding, the server and parity
ask either one the same way; this mixin is that one answer (translation.py imports fairseq_text.py, so it
lives apart from both)."""

from __future__ import annotations

from typing import Any

__all__ = ["GenerationSpecialIds"]


class GenerationSpecialIds:
    """Mixin: `pad_id`, `bos_id`, `eos_id` of a pipeline with a `generation` (GenerationConfig) field."""

    generation: Any

    @property
    def pad_id(self) -> int:
        return self.generation.pad_id

    @property
    def bos_id(self) -> int:
        return self.generation.bos_id

    @property
    def eos_id(self) -> int:
        return self.generation.eos_id
