"""neondb.metrics: the HTTP middleware's label set stays bounded whatever a client sends."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from neondb.metrics import HttpMetricsMiddleware


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _call(app: HttpMetricsMiddleware, method: str) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "method": method, "path": "/made-up", "headers": []}
    await app(scope, receive, send)


def _count(method: str) -> float:
    labels = {"method": method, "route": "unmatched", "status": "204"}
    return REGISTRY.get_sample_value("neondb_http_request_seconds_count", labels) or 0.0


async def test_made_up_methods_share_one_series() -> None:
    """h11 accepts any method token: each made-up one must not add a series forever."""
    app = HttpMetricsMiddleware(_ok)
    before_other, before_get = _count("other"), _count("GET")
    for n in range(200):
        await _call(app, f"X{n}")
    await _call(app, "GET")
    assert _count("other") - before_other == 200
    assert _count("GET") - before_get == 1
    assert _count("X7") == 0
    assert len(app._children) == 2
