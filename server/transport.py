"""Reading request bodies safely and noticing when the client has gone.

The routes parse bodies themselves (rather than letting FastAPI bind them) so every malformed input
gets a precise 4xx from one place: size limit while streaming (413, also for chunked bodies without a
Content-Length), strict UTF-8, JSON without NaN/Infinity, strict base64, multipart with bounded parts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any, AsyncIterator, Awaitable, Optional, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from .errors import ApiError

__all__ = [
    "read_body",
    "parse_json",
    "validate",
    "decode_base64",
    "parse_multipart",
    "media_type",
    "until_disconnected",
    "cancel_on_disconnect",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it exceeds `limit` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not an integer") from None
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body is {size} bytes, more than the limit of {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity; errors are 400 with the position."""
    if not body:
        raise ApiError(400, "invalid_json", "empty body: expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_utf8", f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                            f"column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None


def validate(model: type[M], data: Any) -> M:
    """Validate against a request model; 422 listing each bad field (location, message)."""
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        summary = "; ".join(f"{'.'.join(e['loc']) or 'body'}: {e['msg']}" for e in errors[:5])
        raise ApiError(422, "invalid_request", summary, errors=errors) from None


def decode_base64(text: str, index: int, max_bytes: int) -> bytes:
    """Standard or URL-safe base64 (padding optional, a `data:...;base64,` prefix allowed); 400 if
    malformed, 413 if the decoded size would exceed `max_bytes` (checked before decoding)."""
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(400, "invalid_base64", f"images[{index}]: a data: URL must be base64 ('data:...;base64,')")
    text = "".join(text.split())
    if len(text) * 3 // 4 > max_bytes:
        raise ApiError(413, "image_too_large",
                       f"images[{index}]: about {len(text) * 3 // 4} bytes once decoded, more than the limit of "
                       f"{max_bytes}")
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", f"images[{index}]: not valid base64 ({exc})") from None
    if not data:
        raise ApiError(422, "invalid_image", f"images[{index}]: empty image")
    return data


async def parse_multipart(request: Request, body: bytes, max_files: int, max_fields: int = 8) -> FormData:
    """multipart/form-data from an already size-checked body; 400 when malformed."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=max_fields,
                             max_part_size=64 * 1024)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc.message}") from None
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None


async def until_disconnected(request: Request) -> None:
    """Return when the client closes the connection. Only call once the body has been read: the next
    ASGI message after the body is `http.disconnect`."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientGone(Exception):
    """The client disconnected before the answer was ready; nothing is sent."""


async def cancel_on_disconnect(request: Request, work: Awaitable[T], timeout: Optional[float]) -> T:
    """Await `work`, cancelling it if the client disconnects (queued items are then dropped) or
    `timeout` passes (504)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if watcher in done:
            raise ClientGone()
        raise ApiError(504, "timeout", f"the request did not finish within {timeout:.0f} s")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
