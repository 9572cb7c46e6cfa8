"""HTTP routes. Each handler: check the caller, read and validate the body (every failure a 4xx with
its reason), hand items to the model's batcher, and wait - cancelling the queued work if the client
disconnects or the request times out."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from . import schemas
from .errors import ApiError
from .metrics import CONTENT_TYPE_LATEST
from .security import api_key_dependencies
from .state import ServerState
from .transport import cancel_on_disconnect, decode_base64, media_type, parse_json, parse_multipart, read_body, validate

__all__ = ["build_router", "ENDPOINTS"]

ENDPOINTS = {"/classify", "/translate", "/healthz", "/readyz", "/metrics", "/v1/models", "/docs", "/openapi.json",
             "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
             "/v2/models/{name}/infer", "/v1/models/{name}/load", "/v1/models/{name}/unload"}

_ERRORS = {code: {"model": schemas.ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 422, 500, 503, 504)}
_FORM_FIELDS = {"files", "top_k", "explain", "model"}
_OPTIONS = ("top_k", "explain", "model")
_INLINE_CHARS = 2048
_RAW_IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/bmp"}


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def _form_int(value: Any, name: str) -> int:
    if not isinstance(value, str):
        raise ApiError(422, "invalid_request", f"{name}: expected a form field, not a file")
    try:
        return int(value.strip())
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name}: expected an integer, got {value[:40]!r}") from None


def _form_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ApiError(422, "invalid_request", f"{name}: expected a form field, not a file")
    return value.strip()


def _form_bool(value: Any, name: str) -> bool:
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ApiError(422, "invalid_request", f"{name}: expected true or false")


def build_router(state: ServerState) -> APIRouter:
    settings = state.settings
    limits = settings.limits
    auth = api_key_dependencies(settings.api_key)
    router = APIRouter()

    # ------------------------------------------------------------------ /classify

    def _check_image_count(count: int) -> None:
        """Before any image is read or decoded: a request over the limit costs nothing more."""
        if count > limits.max_images:
            raise ApiError(422, "too_many_items", f"{count} images, more than the limit of {limits.max_images}")

    async def _classify_inputs(request: Request) -> tuple[list[bytes], int, bool, Optional[str]]:
        kind = media_type(request)
        if request.query_params and kind not in _RAW_IMAGE_TYPES:
            raise ApiError(422, "invalid_request", "query parameters are only for raw image bodies; multipart and "
                                                   "JSON requests carry top_k, explain and model in the body")
        body = await read_body(request, limits.max_body_bytes)
        if kind == "multipart/form-data":
            # Generous part limits so a request with a few too many images gets the precise 422 below;
            # the body-size limit bounds the rest.
            form = await parse_multipart(request, body, max_files=4 * limits.max_images + 8, max_fields=4 * len(_FORM_FIELDS))
            unknown = sorted(set(form.keys()) - _FORM_FIELDS)
            if unknown:
                raise ApiError(422, "invalid_request", f"unknown form field(s) {unknown}; expected "
                                                       f"'files' (repeated), 'top_k', 'explain', 'model'")
            repeated = sorted(name for name in _OPTIONS if len(form.getlist(name)) > 1)
            if repeated:
                raise ApiError(422, "invalid_request", f"form field(s) {repeated} given more than once")
            _check_image_count(len(form.getlist("files")))
            blobs = []
            for part in form.getlist("files"):
                if not isinstance(part, UploadFile):
                    raise ApiError(422, "invalid_request", "files: each part must be a file upload")
                blobs.append(await part.read())
            top_k = _form_int(form["top_k"], "top_k") if "top_k" in form else 5
            explain = _form_bool(form["explain"], "explain") if "explain" in form else False
            return blobs, top_k, explain, _form_str(form["model"], "model") if "model" in form else None
        if kind == "application/json":
            req = validate(schemas.ClassifyJSONRequest, parse_json(body))
            _check_image_count(len(req.images))
            blobs = [decode_base64(text, i, limits.max_image_bytes) for i, text in enumerate(req.images)]
            return blobs, req.top_k, req.explain, req.model
        if kind in _RAW_IMAGE_TYPES:
            # One image as the whole body (no multipart parsing, no base64): the cheapest upload.
            # Options come from the query string (?top_k=3&explain=true).
            params = request.query_params
            unknown = sorted(set(params.keys()) - set(_OPTIONS))
            if unknown:
                raise ApiError(422, "invalid_request", f"unknown query parameter(s) {unknown}; expected 'top_k', "
                                                       "'explain', 'model'")
            if not body:
                raise ApiError(422, "empty_request", "empty body: send the image file as the request body")
            top_k = _form_int(params["top_k"], "top_k") if "top_k" in params else 5
            explain = _form_bool(params["explain"], "explain") if "explain" in params else False
            return [body], top_k, explain, _form_str(params["model"], "model") if "model" in params else None
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {kind or '(none)'} not accepted: use multipart/form-data, application/json "
                       f"or a raw image ({', '.join(sorted(_RAW_IMAGE_TYPES))})")

    @router.post(
        "/classify",
        response_model=schemas.ClassifyResponse,
        responses=_ERRORS,
        dependencies=auth,
        summary="Classify images (batched)",
        openapi_extra={"requestBody": {"required": True, "content": {}}},  # filled in by app.custom_openapi
    )
    async def classify(request: Request) -> Response:
        request_id = _request_id(request)
        blobs, top_k, explain, model = await _classify_inputs(request)
        served = state.resolve("image-classification", model)
        if not blobs:
            raise ApiError(422, "empty_request", "no images: send at least one file in 'files' or one "
                                                 "base64 string in 'images'")
        served.check_top_k(top_k)
        rows = await served.preprocess(blobs)
        predictions = await cancel_on_disconnect(
            request, served.classify(rows, top_k, explain, request_id), settings.request_timeout_s
        )
        return JSONResponse({"model": served.name, "predictions": predictions})

    # ------------------------------------------------------------------ /translate

    @router.post(
        "/translate",
        response_model=schemas.TranslateResponse,
        responses=_ERRORS,
        dependencies=auth,
        summary="Translate texts (continuous batching)",
        openapi_extra={"requestBody": {"required": True, "content": {}}},
    )
    async def translate(request: Request) -> Response:
        request_id = _request_id(request)
        kind = media_type(request)
        if kind != "application/json":
            raise ApiError(415, "unsupported_media_type", f"Content-Type {kind or '(none)'} not accepted: "
                                                          "use application/json")
        req = validate(schemas.TranslateRequest, parse_json(await read_body(request, limits.max_body_bytes)))
        served = state.resolve("translation", req.model)
        if sum(map(len, req.texts)) <= _INLINE_CHARS:  # tokenising a few short texts costs less than a thread hop
            jobs = served.prepare(req.texts, req.beam_size, req.max_length)
        else:
            jobs = await state.run_in_pool(served.prepare, req.texts, req.beam_size, req.max_length)
        results = await cancel_on_disconnect(request, served.translate(jobs, request_id), settings.request_timeout_s)
        return JSONResponse({
            "model": served.name,
            "translations": [{"text": text, "score": score} for text, score in results],
        })

    # ------------------------------------------------------------------ operations

    @router.get("/healthz", response_model=schemas.Health, summary="Liveness: the process answers")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "models": state.model_statuses()})

    @router.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}},
                summary="Readiness: every model loaded and warmed up")
    async def readyz() -> Response:
        body: dict[str, Any] = {"status": state.status, "models": state.model_statuses()}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.ready else 503,
                            headers=None if state.ready else {"Retry-After": "1"})

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        return Response(state.render_metrics(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/models", response_model=schemas.ModelsResponse, responses={401: _ERRORS[401]},
                dependencies=auth, summary="Every model: state (loading|ready|failed|unloaded), backend, batching")
    async def models() -> Response:
        return JSONResponse({"models": state.model_info()})

    @router.post("/v1/models/{name}/load", response_model=schemas.ModelInfo, dependencies=auth,
                 responses={code: _ERRORS[code] for code in (401, 404, 409, 422, 503)},
                 summary="Load (or reload) a model at runtime; 422 with the reason when it fails")
    async def load_model(name: str) -> Response:
        return JSONResponse(await state.load(name))

    @router.post("/v1/models/{name}/unload", response_model=schemas.ModelInfo, dependencies=auth,
                 responses={code: _ERRORS[code] for code in (401, 404, 409, 503)},
                 summary="Unload a model: new requests get 503, queued ones finish first")
    async def unload_model(name: str) -> Response:
        return JSONResponse(await state.unload(name))

    return router


def json_error(status: int, code: str, detail: str, request_id: Optional[str],
               headers: Optional[dict[str, str]] = None, errors: Optional[list] = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail, "code": code, "request_id": request_id}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)
