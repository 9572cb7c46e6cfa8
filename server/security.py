"""Optional bearer API key. Off unless `MMSERVE_API_KEY` is set; then the inference and model-listing
routes need `Authorization: Bearer <key>` (compared in constant time). Probes (/healthz, /readyz) and
/metrics stay open so orchestrators and scrapers need no secret; put /metrics behind the network
boundary as usual for Prometheus."""

from __future__ import annotations

import hmac
from typing import Optional

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from .errors import ApiError

__all__ = ["api_key_dependencies"]

_bearer = HTTPBearer(auto_error=False, description="required only when the server runs with MMSERVE_API_KEY")


def api_key_dependencies(key: Optional[SecretStr]) -> list:
    """Route dependencies enforcing `key`; none at all without a key, so the OpenAPI document only
    declares the bearer scheme when the server really requires it."""
    if key is None:
        return []
    expected = key.get_secret_value().encode()

    async def check(credentials: Optional[HTTPAuthorizationCredentials] = Depends(_bearer)) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise ApiError(401, "unauthorized", "invalid API key", headers={"WWW-Authenticate": "Bearer"})

    return [Depends(check)]
