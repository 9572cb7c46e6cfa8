"""The Open Inference Protocol (KServe v2, which Triton also speaks) next to the mmserve API.

Existing clients (tritonclient's HTTP client, KServe tooling) call mmserve models on tensors:

- classifiers take `pixel_values` (FP32, [N, C, H, W], the model's preprocessed input) and answer
  `probabilities` (FP32, [N, labels], in label order) and `label` (BYTES, [N], the top class);
- translators take `text` (BYTES, [N]) and answer `translation` (BYTES, [N]) and `score` (FP32, [N]):
  a text model on the v2 protocol, as Triton's Python-backend text models are. Token-id tensors are
  not offered: the tokenizer's ids are an internal detail of one model directory.

Requests go through the same model resolution, batchers, limits and metrics as /classify and
/translate. The request body is JSON, or JSON followed by binary tensors (the binary tensor extension,
`Inference-Header-Content-Length`, which tritonclient uses by default); answers are JSON. Errors carry
the protocol's `{"error": ...}` beside mmserve's `detail`/`code` (added in app.py for /v2 paths).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .errors import ApiError
from .security import api_key_dependencies
from .state import ServerState
from .transport import cancel_on_disconnect, parse_json, read_body, validate

__all__ = ["build_v2_router", "SERVER_NAME"]

SERVER_NAME = "mmserve"
_VERSION = "1"  # mmserve serves one version of a model under its name
_HEADER_LENGTH = "inference-header-content-length"
_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


class _Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., max_length=200)
    shape: list[int] = Field(..., max_length=8)
    datatype: str = Field(..., max_length=16)
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Optional[list[Any]] = None


class _RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., max_length=200)
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    """The protocol's inference request (JSON part)."""

    model_config = ConfigDict(extra="forbid")

    id: Optional[str] = Field(None, max_length=200)
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[_Tensor] = Field(..., min_length=1, max_length=8)
    outputs: Optional[list[_RequestedOutput]] = Field(None, max_length=8)


def _flatten(data: list[Any]) -> list[Any]:
    """The protocol allows nested (row-major) or flat `data`; numpy-free flattening keeps types checked."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _signature(served: Any) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of a served model as the protocol's metadata describes them."""
    if served.task == "image-classification":
        c, h, w = served.input_shape
        return ([{"name": "pixel_values", "datatype": "FP32", "shape": [-1, c, h, w]}],
                [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(served.labels)]},
                 {"name": "label", "datatype": "BYTES", "shape": [-1]}])
    return ([{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            [{"name": "translation", "datatype": "BYTES", "shape": [-1]},
             {"name": "score", "datatype": "FP32", "shape": [-1]}])


def _parse(body: bytes, header_length: Optional[str], max_items: int) -> InferRequest:
    """The JSON header and, with the binary extension, each input's bytes put into its `data`."""
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ApiError(400, "bad_request", "Inference-Header-Content-Length must be an integer") from None
        if not 0 < length <= len(body):
            raise ApiError(400, "bad_request", f"Inference-Header-Content-Length {length} is outside the body "
                                               f"({len(body)} bytes)")
        body, binary = body[:length], body[length:]
    req = validate(InferRequest, parse_json(body))
    offset = 0
    for tensor in req.inputs:
        if any(d < 0 for d in tensor.shape):
            raise ApiError(422, "invalid_request", f"input {tensor.name!r}: negative dimension in shape {tensor.shape}")
        if tensor.shape and tensor.shape[0] > max_items:
            raise ApiError(422, "too_many_items", f"input {tensor.name!r}: batch of {tensor.shape[0]}, more than "
                                                  f"the limit of {max_items}")
        size = tensor.parameters.get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise ApiError(422, "invalid_request", f"input {tensor.name!r} has neither 'data' nor binary data")
            tensor.data = _flatten(tensor.data)
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise ApiError(400, "bad_request", f"input {tensor.name!r}: binary_data_size {size!r} does not fit "
                                               "the binary part of the body")
        tensor.data = _from_binary(tensor, binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise ApiError(400, "bad_request", f"{len(binary) - offset} bytes of binary data belong to no input")
    return req


def _from_binary(tensor: _Tensor, raw: bytes) -> list[Any]:
    if tensor.datatype == "BYTES":  # each element: 4-byte little-endian length, then the bytes
        items, i = [], 0
        while i < len(raw):
            if i + 4 > len(raw):
                raise ApiError(400, "bad_request", f"input {tensor.name!r}: truncated BYTES element")
            n = int.from_bytes(raw[i:i + 4], "little")
            if i + 4 + n > len(raw):
                raise ApiError(400, "bad_request", f"input {tensor.name!r}: truncated BYTES element")
            items.append(raw[i + 4:i + 4 + n])
            i += 4 + n
        return items
    dtype = _NUMPY.get(tensor.datatype)
    if dtype is None:
        raise ApiError(422, "invalid_request", f"input {tensor.name!r}: datatype {tensor.datatype} not supported")
    if len(raw) % np.dtype(dtype).itemsize:
        raise ApiError(400, "bad_request", f"input {tensor.name!r}: {len(raw)} bytes is not a whole number of "
                                           f"{tensor.datatype} values")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).tolist()


def _one_input(req: InferRequest, name: str, datatype: str) -> _Tensor:
    if len(req.inputs) != 1 or req.inputs[0].name != name:
        raise ApiError(422, "invalid_request", f"expected exactly one input named {name!r} ({datatype}), got "
                                               f"{[t.name for t in req.inputs]}")
    tensor = req.inputs[0]
    if tensor.datatype != datatype:
        raise ApiError(422, "invalid_request", f"input {name!r}: datatype must be {datatype}, got {tensor.datatype}")
    expected = math.prod(tensor.shape)
    if len(tensor.data) != expected:
        raise ApiError(422, "invalid_request", f"input {name!r}: shape {tensor.shape} needs {expected} values, "
                                               f"got {len(tensor.data)}")
    return tensor


def _pixel_rows(tensor: _Tensor, input_shape: tuple[int, ...]) -> list[np.ndarray]:
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != tuple(input_shape) or tensor.shape[0] < 1:
        raise ApiError(422, "invalid_request", f"input 'pixel_values': shape must be [N, {', '.join(map(str, input_shape))}] "
                                               f"with N >= 1, got {tensor.shape}")
    try:
        values = np.asarray(tensor.data, dtype=np.float32)
    except (TypeError, ValueError):
        raise ApiError(422, "invalid_request", "input 'pixel_values': data must be numbers") from None
    if values.dtype != np.float32 or not np.isfinite(values).all():
        raise ApiError(422, "invalid_request", "input 'pixel_values': values must be finite numbers")
    return list(values.reshape(tensor.shape))


def _texts(tensor: _Tensor) -> list[str]:
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise ApiError(422, "invalid_request", f"input 'text': shape must be [N] with N >= 1, got {tensor.shape}")
    texts = []
    for i, value in enumerate(tensor.data):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, "invalid_text", f"input 'text'[{i}] is not UTF-8") from None
        if not isinstance(value, str):
            raise ApiError(422, "invalid_request", f"input 'text'[{i}] must be a string")
        texts.append(value)
    return texts


def _check_outputs(req: InferRequest, outputs: list[dict]) -> list[str]:
    """The outputs to return: the requested ones (each must exist), else all."""
    names = [o["name"] for o in outputs]
    if not req.outputs:
        return names
    unknown = [o.name for o in req.outputs if o.name not in names]
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown output(s) {unknown}; this model has {names}")
    return [o.name for o in req.outputs]


def build_v2_router(state: ServerState) -> APIRouter:
    settings = state.settings
    limits = settings.limits
    auth = api_key_dependencies(settings.api_key)
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe v2)"])

    @router.get("", summary="Server metadata")
    async def server_metadata() -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": "0.1.0", "extensions": ["binary_tensor_data"]})

    @router.get("/health/live", summary="Liveness")
    async def live() -> Response:
        return JSONResponse({"live": True})

    @router.get("/health/ready", summary="Readiness (200 once every model has been loaded or reported)")
    async def ready() -> Response:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    @router.get("/models/{name}", dependencies=auth, summary="Model metadata: inputs and outputs")
    async def model_metadata(name: str) -> Response:
        served = state.resolve(None, name)
        inputs, outputs = _signature(served)
        return JSONResponse({"name": name, "versions": [_VERSION], "platform": f"mmserve_{served.backend.info.backend}",
                             "inputs": inputs, "outputs": outputs})

    @router.get("/models/{name}/ready", dependencies=auth, summary="Model readiness")
    async def model_ready(name: str) -> Response:
        slot = state.slots.get(name)
        if slot is None:
            state.resolve(None, name)  # raises the 404 listing the models
        ok = slot.state == "ready"
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @router.post("/models/{name}/infer", dependencies=auth, summary="Inference on tensors (JSON, binary extension)")
    async def infer(name: str, request: Request) -> Response:
        body = await read_body(request, limits.max_body_bytes)
        served = state.resolve(None, name)
        request_id = request.scope.get("state", {}).get("request_id", "")
        _, outputs = _signature(served)
        if served.task == "image-classification":
            req = _parse(body, request.headers.get(_HEADER_LENGTH), limits.max_images)
            wanted = _check_outputs(req, outputs)
            rows = _pixel_rows(_one_input(req, "pixel_values", "FP32"), served.input_shape)
            probs = await cancel_on_disconnect(request, served.probabilities(rows, request_id),
                                               settings.request_timeout_s)
            values = {"probabilities": ("FP32", list(probs.shape), probs.ravel().tolist()),
                      "label": ("BYTES", [len(rows)], [served.labels[i] for i in probs.argmax(axis=1)])}
        else:
            req = _parse(body, request.headers.get(_HEADER_LENGTH), limits.max_texts)
            wanted = _check_outputs(req, outputs)
            texts = _texts(_one_input(req, "text", "BYTES"))
            jobs = await state.run_in_pool(served.prepare, texts, None, None)
            results = await cancel_on_disconnect(request, served.translate(jobs, request_id),
                                                 settings.request_timeout_s)
            values = {"translation": ("BYTES", [len(texts)], [text for text, _ in results]),
                      "score": ("FP32", [len(texts)], [score for _, score in results])}
        answer: dict[str, Any] = {"model_name": name, "model_version": _VERSION, "outputs": [
            {"name": out, "datatype": values[out][0], "shape": values[out][1], "data": values[out][2]}
            for out in wanted]}
        if req.id is not None:
            answer["id"] = req.id
        return JSONResponse(answer)

    return router
