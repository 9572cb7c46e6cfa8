"""Offline batch translation of many lines (what `mmserve translate` runs): CTranslate2's
`translate_file` workflow on mmserve's own search.

One line in, one line out, in order. Lines are checked first, each on its own, so every
untranslatable line is found and reported with its line number before any decoding starts
(`LineError`); the caller decides whether that stops the run or the line becomes an empty output
(`on_error`), but a line is never dropped silently. Blank lines map to blank lines without a model
call (they carry no text to translate, and keeping them keeps the files line-aligned).

The valid lines are sorted by source length so each batch holds sentences of similar length (less
padding, and the search's finished rows leave together), decoded batch by batch with
`mmserve.models.decoding.translate` (the same code the server's offline path and the tests use) and
put back in input order. `workers` > 1 decodes that many batches at once on threads sharing one
stepper: the runtimes release the GIL inside their kernels, and both the torch model and the
onnxruntime stepper are stateless between calls.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence

from .translation import SourceTextError, TranslationTokenizer, encode_sources

__all__ = ["LineError", "BatchTranslation", "check_lines", "translate_lines"]

OnError = Literal["fail", "empty"]


@dataclass(frozen=True)
class LineError:
    """An untranslatable input line: 1-based line number and the reason."""

    line: int
    reason: str

    def __str__(self) -> str:
        # Reasons from the tokenizer start with the text in parentheses: "line 4 ('hello') has words ..."
        return f"line {self.line} {self.reason}" if self.reason.startswith("(") else f"line {self.line}: {self.reason}"


@dataclass
class BatchTranslation:
    """Outputs in input order (an empty string for a blank or failed line) and the failed lines."""

    outputs: list[str]
    scores: list[Optional[float]]
    errors: list[LineError]


def _reason(exc: SourceTextError) -> str:
    """The tokenizer's message names the text by its index in the list it was given ("text 0");
    checked one line at a time that index is always 0 and means nothing to the user."""
    message = str(exc)
    return message[len("text 0 "):] if message.startswith("text 0 ") else message


def check_lines(tokenizer: TranslationTokenizer, lines: Sequence[str]) -> tuple[dict[int, int], list[LineError]]:
    """Validate every non-blank line on its own: ({index: source length in tokens}, errors).

    One line at a time because `encode_sources` stops at the first bad text of a list; a file needs
    all of them reported. Blank lines are in neither result.
    """
    lengths: dict[int, int] = {}
    errors: list[LineError] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            (ids,) = encode_sources(tokenizer, [line])
        except SourceTextError as exc:
            errors.append(LineError(index + 1, _reason(exc)))
            continue
        lengths[index] = len(ids)
    return lengths, errors


def translate_lines(
    stepper,
    tokenizer: TranslationTokenizer,
    lines: Sequence[str],
    beam_size: Optional[int] = None,
    max_length: Optional[int] = None,
    batch_size: int = 32,
    workers: int = 1,
    on_error: OnError = "fail",
    progress: Optional[Callable[[int], None]] = None,
) -> BatchTranslation:
    """Translate `lines` (see the module docstring). With on_error="fail" and any bad line, raises
    `SourceTextError` listing them before decoding anything; with "empty" they become empty outputs
    and are returned in `errors`. `progress(n)` is called as n more lines are done."""
    from mmserve.models.decoding import translate

    if batch_size < 1 or workers < 1:
        raise SourceTextError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    lengths, errors = check_lines(tokenizer, lines)
    if errors and on_error == "fail":
        shown = "; ".join(map(str, errors[:20]))
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise SourceTextError(f"{len(errors)} untranslatable line(s): {shown}{more}")
    order = sorted(lengths, key=lambda i: (lengths[i], i))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    outputs = [""] * len(lines)
    scores: list[Optional[float]] = [None] * len(lines)
    if progress is not None and len(lines) > len(order):
        progress(len(lines) - len(order))  # blank and failed lines are done already

    def run(batch: list[int]) -> list[int]:
        results = translate(stepper, tokenizer, [lines[i] for i in batch], beam_size=beam_size,
                            max_length=max_length, batch_size=len(batch))
        for i, (text, score) in zip(batch, results):
            outputs[i], scores[i] = text, score
        return batch

    if workers == 1:
        done = map(run, batches)
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="mmserve-translate")
        done = pool.map(run, batches)
    try:
        for batch in done:
            if progress is not None:
                progress(len(batch))
    finally:
        if workers > 1:
            pool.shutdown(wait=True, cancel_futures=True)
    return BatchTranslation(outputs, scores, errors)
