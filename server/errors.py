"""The server's error vocabulary: every refusal is an `ApiError` with a status, a stable `code` and a
reason meant for the client. Anything else that escapes a route is a server fault: it is logged with
the request id and answered 500 with a generic message (the traceback never reaches the client).

Status policy (documented in the report / README):
  400 unreadable request (bad JSON, invalid UTF-8, bad base64, bad multipart)
  401 missing/wrong API key          413 body, image bytes or image pixels over a limit
  415 unsupported content type/format 422 well-formed but invalid (types, unknown fields, ranges,
                                          empty list, too many items, text too long, not an image)
  503 overloaded (queue full: Retry-After), not ready, shutting down, queue wait timeout
  500 a backend fault while running a batch (code "backend_error", with the request id, logged)
  504 request exceeded request_timeout_s
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["ApiError", "Overloaded", "BackendFault", "QueueTimeout", "ShuttingDown"]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: Optional[dict[str, str]] = None,
        errors: Optional[list[dict[str, Any]]] = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.errors = errors


class Overloaded(ApiError):
    """The model's queue is full: back off for `retry_after` seconds."""

    def __init__(self, model: str, retry_after: int) -> None:
        super().__init__(503, "overloaded", f"model {model!r} is at capacity; retry after {retry_after} s",
                         headers={"Retry-After": str(retry_after)})


class QueueTimeout(ApiError):
    def __init__(self, model: str, waited: float) -> None:
        super().__init__(503, "queue_timeout", f"model {model!r} did not start this request within {waited:.1f} s",
                         headers={"Retry-After": "1"})


class ShuttingDown(ApiError):
    def __init__(self, model: str) -> None:
        super().__init__(503, "shutting_down", f"model {model!r} is shutting down", headers={"Retry-After": "1"})


class BackendFault(ApiError):
    """The model run that carried this request's items raised. Only that batch's requests get it."""

    def __init__(self, model: str) -> None:
        super().__init__(500, "backend_error",
                         f"model {model!r} failed while running the batch that held this request; "
                         "the error was logged under this request id")
