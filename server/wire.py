"""The messages between HTTP frontends and the engine process (msgspec over ZeroMQ).

One ZeroMQ message = frame 0, a msgpack header (a tagged msgspec Struct, below), then the payload
frames. Why this shape (the vLLM engine-core protocol does the same):

- Headers are tiny typed Structs: msgspec decodes them ~10x faster than pydantic/json and refuses a
  malformed message instead of half-reading it.
- Tensors never go through msgpack or pickle: a request's pixel rows travel as ONE raw frame (the rows
  stacked once, in the frontend) sent with `copy=False`, and the engine views that frame as a numpy array
  without copying it (`np.frombuffer`). The engine's batcher then stacks rows of many requests into the
  model's input: the one copy the batch needs anyway.
- Results go back as a second frame encoded with the model's own result type (`Row` for classifiers,
  `(token ids, score)` for translators) so the frontend decodes them straight into that type.

Only our own processes on this machine speak this protocol (an `ipc://` socket in a private directory);
nothing here parses bytes from the network.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import msgspec
import numpy as np

__all__ = [
    "Submit", "Cancel", "Ping", "Control", "Reply", "Status", "ModelEntry", "ErrorInfo", "Row",
    "ENCODER", "TO_ENGINE", "FROM_ENGINE", "pack_payloads", "unpack_payloads",
]


class Row(msgspec.Struct, array_like=True):
    """A classifier's answer for one image: the full ranking (sliced to each request's top_k by the
    frontend) and, with explain, the attention rollout."""

    ranking: dict[str, Any]
    explanation: Optional[dict[str, Any]] = None


class Submit(msgspec.Struct, tag="submit", array_like=True):
    """Frontend -> engine: run these items on `model`. Rows come as one frame (`dtype`, `shape`);
    translation jobs as `(source ids, beam size, max length)` triples."""

    id: int
    model: str
    key: Any
    request_id: str
    dtype: str = ""
    shape: tuple[int, ...] = ()
    jobs: Optional[list[tuple[list[int], int, int]]] = None


class Cancel(msgspec.Struct, tag="cancel", array_like=True):
    """Frontend -> engine: the client of request `id` left; drop its queued items."""

    id: int


class Ping(msgspec.Struct, tag="ping", array_like=True):
    """Frontend -> engine: are you there, and are your models ready? (answered with a Status)."""


class Control(msgspec.Struct, tag="control", array_like=True):
    """Frontend -> engine: load or unload model `name` (answered by a Reply, then the new Status)."""

    id: int
    action: str  # "load" | "unload"
    name: str


class ErrorInfo(msgspec.Struct, array_like=True):
    """An `ApiError` raised in the engine (queue full, queue timeout, backend fault, ...), re-raised
    as the same HTTP answer by the frontend that owns the request."""

    status: int
    code: str
    detail: str
    headers: dict[str, str] = {}


class Reply(msgspec.Struct, tag="reply", array_like=True):
    """Engine -> frontend: the outcome of Submit `id`; results follow in frame 1 when `error` is None."""

    id: int
    error: Optional[ErrorInfo] = None


class ModelEntry(msgspec.Struct):
    """One model slot of the engine, as /v1/models shows it (`info`), plus where its config/tokenizer
    live and its state (only a "ready" model takes requests)."""

    name: str
    task: str
    source: str
    info: dict[str, Any]
    state: str = "ready"
    reason: Optional[str] = None


class Status(msgspec.Struct, tag="status", array_like=True):
    """Engine -> frontend: its load status (loading | ready | failed | stopping) and its models."""

    status: str
    error: Optional[str] = None
    models: list[ModelEntry] = []


ENCODER = msgspec.msgpack.Encoder(enc_hook=str)  # str(): paths and other plain values in model info
TO_ENGINE = msgspec.msgpack.Decoder(Union[Submit, Cancel, Ping, Control])
FROM_ENGINE = msgspec.msgpack.Decoder(Union[Reply, Status])


def pack_payloads(submit: Submit, payloads: Sequence[Any]) -> list[Any]:
    """Fill `submit` for these items and return the payload frames (zero or one buffer)."""
    if payloads and isinstance(payloads[0], np.ndarray):
        rows = np.ascontiguousarray(np.stack(payloads))
        submit.dtype, submit.shape = str(rows.dtype), tuple(rows.shape)
        return [memoryview(rows).cast("B")]
    submit.jobs = [(list(job.src), job.beam_size, job.max_length) for job in payloads]
    return []


def unpack_payloads(submit: Submit, frames: Sequence[Any]) -> list[Any]:
    """The items of a Submit, as the engine's batcher takes them (no copy of the row frame)."""
    if submit.jobs is not None:
        from .continuous import TranslationJob

        return [TranslationJob(tuple(src), beam, length) for src, beam, length in submit.jobs]
    if len(frames) != 1:
        raise ValueError(f"expected one row frame, got {len(frames)}")
    rows = np.frombuffer(frames[0], dtype=np.dtype(submit.dtype)).reshape(submit.shape)
    return list(rows)
