"""Pure-ASGI middleware (cheaper than BaseHTTPMiddleware on every request): a request id on every
request and response, and the Prometheus request counters/latency. Endpoint labels come from a fixed
set of route paths so a scan of random URLs cannot blow up the metrics' cardinality."""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

__all__ = ["RequestContextMiddleware"]

_METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _template(path: str, endpoints: set[str]) -> str:
    """Per-model routes are counted under their template (`/v2/models/{name}/infer`), so model names
    never become label values; anything else is "other"."""
    if path.startswith(("/v2/models/", "/v1/models/")):
        parts = path.split("/")
        if len(parts) >= 4:
            template = "/".join([*parts[:3], "{name}", *parts[4:]])
            if template in endpoints:
                return template
    return "other"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints
        self._counters: dict = {}  # (endpoint, method, status) -> bound counter
        self._latency = {e: metrics.request_latency.labels(e) for e in (*endpoints, "other")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        endpoint = path if path in self.endpoints else _template(path, self.endpoints)
        status = 500
        start = time.perf_counter()
        self.metrics.in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            method = scope["method"] if scope["method"] in _METHODS else "other"  # bounded label values
            key = (endpoint, method, status)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self.metrics.requests.labels(endpoint, method, str(status))
            counter.inc()
            self._latency[endpoint].observe(time.perf_counter() - start)
