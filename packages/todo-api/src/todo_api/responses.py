"""Error responses the routes declare, so the OpenAPI schema tells clients (and
schemathesis) every status they can get."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from todo_api.models import ErrorDetail

__all__ = ["BAD_BODY", "COMMON_RESPONSES", "NOT_FOUND", "not_found"]

COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorDetail,
        "description": "missing or invalid bearer token (`WWW-Authenticate: Bearer`); "
        "checked before the body is read",
    },
    413: {
        "model": ErrorDetail,
        "description": "request body over `APP_MAX_BODY_BYTES` (default 1 MiB)",
    },
    503: {
        "model": ErrorDetail,
        "description": "database (or identity provider) unavailable; see `Retry-After`",
    },
    429: {
        "model": ErrorDetail,
        "description": "too many of your requests at once (`APP_USER_MAX_CONCURRENCY`); "
        "see `Retry-After`",
    },
    504: {"model": ErrorDetail, "description": "database statement timed out"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "no such resource, or not yours"},
}


BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "the body cannot be parsed (not UTF-8, too deep)"},
}


def not_found(resource: str) -> HTTPException:
    """The same body whether the resource is missing or another user's."""
    return HTTPException(status_code=404, detail=f"{resource} not found")
