"""The FastAPI application factory: middleware, error handlers, routes, OpenAPI document, lifespan.

`create_app(settings)` builds a complete app without touching the network; `mmserve serve` runs it
under uvicorn. Lifespan: start -> models load in the background (readiness 503 until warm) ->
serve -> on shutdown uvicorn stops accepting and waits for in-flight requests (up to
`shutdown_grace_s`), then the batchers drain whatever is still queued and the backends close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import schemas
from .errors import ApiError
from .middleware import RequestContextMiddleware
from .playground import mount_playground
from .routes import ENDPOINTS, build_router, json_error
from .settings import ServerSettings
from .state import ServerState
from .transport import ClientGone
from .v2 import build_v2_router

__all__ = ["create_app"]

log = logging.getLogger("mmserve.server")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 400: "bad_request"}


def _request_id(request: Request) -> Optional[str]:
    return request.scope.get("state", {}).get("request_id")


def create_app(settings: Optional[ServerSettings] = None, state: Optional[ServerState] = None) -> FastAPI:
    settings = settings or ServerSettings()
    state = state or ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(state.start(), name="load-models")
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
                await asyncio.gather(loader, return_exceptions=True)
            await state.stop()

    app = FastAPI(
        title="mmserve",
        version="0.1.0",
        description="Batched inference for MultiMax models: /classify (images) and /translate (text). "
                    "Errors are JSON {detail, code, request_id}; every response carries X-Request-ID.",
        lifespan=lifespan,
    )
    app.state.server = state
    app.include_router(build_router(state))
    app.include_router(build_v2_router(state))
    mount_playground(app)

    # ------------------------------------------------------------------ error handlers

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        response = json_error(exc.status, exc.code, exc.detail, _request_id(request), exc.headers, exc.errors)
        return _with_v2_error(request, response, exc.detail)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it; metrics do

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = json_error(exc.status_code, code, str(exc.detail), _request_id(request),
                              dict(exc.headers) if exc.headers else None)
        return _with_v2_error(request, response, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return _with_v2_error(request, json_error(422, "invalid_request", detail, _request_id(request), errors=errors),
                              detail)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        request_id = _request_id(request)
        log.error("unhandled error in %s %s (request id %s)", request.method, request.url.path, request_id,
                  exc_info=exc)
        return json_error(500, "internal_error", "internal server error; it was logged under this request id",
                          request_id)

    # ------------------------------------------------------------------ middleware (last added = outermost)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"], expose_headers=["X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, endpoints=ENDPOINTS)

    app.openapi = lambda: _openapi(app, state)  # type: ignore[method-assign]
    return app


def _with_v2_error(request: Request, response: Response, detail: str) -> Response:
    """Open Inference Protocol clients (tritonclient) read an error's text from `error`."""
    if not request.url.path.startswith("/v2"):
        return response
    body = json.loads(response.body)
    body["error"] = detail
    return JSONResponse(body, status_code=response.status_code, headers={
        k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")})


def _example_png() -> str:
    """A 16x16 PNG of a dark vertical stroke (a "1"), base64: a working example for the docs."""
    import base64
    import io

    from PIL import Image

    image = Image.new("L", (16, 16), 255)
    image.paste(0, (7, 2, 10, 14))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


_EXAMPLE_PNG = _example_png()


def _json_schema(model: type, **overrides: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema()
    for prop, extra in overrides.items():
        schema["properties"][prop].update(extra)
    return schema


def _openapi(app: FastAPI, state: ServerState) -> dict[str, Any]:
    """FastAPI's document plus the request bodies the handlers parse themselves, with this server's
    limits (max items, label count, beam size) written into the schemas."""
    if app.openapi_schema:
        return app.openapi_schema  # cached once the models (and so the label count) are known
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    limits = state.settings.limits
    n_labels = len(state.classifier.labels) if state.classifier else None
    top_k = {"maximum": n_labels} if n_labels else {}
    images = _json_schema(
        schemas.ClassifyJSONRequest,
        images={"maxItems": limits.max_images, "items": {"type": "string", "contentEncoding": "base64"}},
        top_k=top_k,
    )
    multipart = {
        "type": "object",
        "required": ["files"],
        "additionalProperties": False,
        "properties": {
            "files": {"type": "array", "minItems": 1, "maxItems": limits.max_images,
                      "items": {"type": "string", "format": "binary"},
                      "description": "image files (PNG, JPEG, WebP, BMP); repeat the field for several"},
            "top_k": {"type": "integer", "minimum": 1, **top_k, "default": 5},
            "explain": {"type": "boolean", "default": False},
            "model": {"type": "string", "maxLength": 200, "description": "model name (GET /v1/models)"},
        },
    }
    translate = _json_schema(
        schemas.TranslateRequest,
        texts={"maxItems": limits.max_texts, "items": {"type": "string", "maxLength": limits.max_text_chars}},
        beam_size={"maximum": limits.max_beam_size},
        max_length={"anyOf": [{"type": "integer", "minimum": 1, "maximum": limits.max_output_tokens},
                              {"type": "null"}]},
    )
    paths = doc["paths"]
    paths["/classify"]["post"]["requestBody"] = {
        "required": True,
        "content": {"multipart/form-data": {"schema": multipart, "encoding": {"files": {"contentType": "image/*"}}},
                    "application/json": {"schema": images, "examples": {
                        "one digit": {"value": {"images": [_EXAMPLE_PNG], "top_k": 3}},
                        "explain": {"value": {"images": [_EXAMPLE_PNG], "top_k": 1, "explain": True}}}},
                    **{kind: {"schema": {"type": "string", "format": "binary",
                                         "description": "one image as the whole body; optional query string "
                                                        "?top_k=N&explain=true|false&model=NAME (raw bodies only: not "
                                                        "declared as parameters, which would apply to every "
                                                        "content type)"}}
                       for kind in ("image/png", "image/jpeg", "image/webp", "image/bmp")}},
    }
    paths["/translate"]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": translate,
        "examples": {"greedy": {"value": {"texts": ["forty-two", "one hundred and five"], "beam_size": 1}},
                     "beam": {"value": {"texts": ["nine hundred and ninety-nine"], "beam_size": 2, "max_length": 16}}},
    }}}
    if state.ready:
        app.openapi_schema = doc
    return doc
