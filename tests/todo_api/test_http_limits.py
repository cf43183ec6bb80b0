"""What a request may cost before it is refused: the body limit (413, declared or counted
while read, chunked too), the bearer token checked before the body is read, 422s that echo
a little of the input (never megabytes), and a concurrent request served while the largest
invalid body is rejected."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from todo_api.app import MAX_ECHO_CHARS, MAX_ERRORS
from todo_api.testing import auth_headers

ALICE = auth_headers("alice")
LIMIT = 1 << 20  # APP_MAX_BODY_BYTES's default, which the test app keeps
TOO_LARGE = {"detail": f"request body too large: the limit is {LIMIT} bytes"}


def padded(prefix: str, item: str, suffix: str, size: int) -> bytes:
    """`prefix item,item,... suffix` as long as fits in `size` bytes."""
    count = (size - len(prefix) - len(suffix)) // (len(item) + 1)
    return (prefix + ",".join([item] * count) + suffix).encode()


# Bodies just under the limit that each stress one stage: a list far over its max_length,
# a list of nested containers (the costliest JSON to build), 95,000 unknown fields, a long
# string, and a body that is not JSON at all.
HOSTILE = {
    "tags": padded('{"title":"a","tags":[', '"t"', "]}", LIMIT),
    "nested-tags": padded('{"title":"a","tags":[', "[]", "]}", LIMIT),
    "unknown-fields": b"{" + b",".join(b'"k%d":1' % i for i in range(95_000)) + b"}",
    "long-title": b'{"title":"' + b"a" * (LIMIT - 20) + b'"}',
    "not-json": b'{"title":' + b"[" * (LIMIT - 20),
}


class Recorder:
    """An ASGI `receive` that records whether the app asked for the body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {"type": "http.request", "body": self.body, "more_body": False}


async def call_asgi(
    app: FastAPI, method: str, path: str, headers: dict[str, str], receive: Recorder
) -> tuple[int, dict[str, str], bytes]:
    """One request straight through the ASGI interface, so the test sees every read."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


# the limit ---------------------------------------------------------------------------------


async def test_declared_length_over_the_limit_is_refused_unread(api_app: FastAPI) -> None:
    receive = Recorder(b"{}")
    headers = {**ALICE, "content-type": "application/json", "content-length": str(LIMIT + 1)}
    status, out, body = await call_asgi(api_app, "POST", "/api/tasks", headers, receive)
    assert (status, json.loads(body)) == (413, TOO_LARGE)
    assert receive.calls == 0
    assert out["connection"] == "close"
    assert "x-request-id" in out  # inside the request-id middleware


async def chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def test_chunked_body_over_the_limit_is_refused_while_read(
    client: httpx.AsyncClient,
) -> None:
    body = json.dumps({"title": "big", "description": "x" * (LIMIT + 10)}).encode()
    r = await client.post(
        "/api/tasks",
        content=chunks(body),
        headers={**ALICE, "content-type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert (r.status_code, r.json()) == (413, TOO_LARGE)
    assert (await client.get("/api/tasks", headers=ALICE)).json()["total"] == 0


async def test_chunked_body_within_the_limit_is_served(client: httpx.AsyncClient) -> None:
    body = json.dumps({"role": "user", "content": "\U0001f600" * 32_000}).encode()
    assert len(body) < LIMIT
    conv = (await client.post("/api/conversations", json={}, headers=ALICE)).json()
    r = await client.post(
        f"/api/conversations/{conv['id']}/messages",
        content=chunks(body, 4096),
        headers={**ALICE, "content-type": "application/json"},
    )
    assert r.status_code == 201, r.text


async def test_the_limit_is_a_setting(neondb_schema_url: str) -> None:
    from asgi_lifespan import LifespanManager

    from todo_api.app import create_app
    from todo_api.testing import app_settings, make_client

    app = create_app(app_settings(neondb_schema_url, app_max_body_bytes=2048))
    async with LifespanManager(app), make_client(app) as client:
        ok = await client.post("/api/tasks", json={"title": "t" * 200}, headers=ALICE)
        assert ok.status_code == 201
        big = await client.post("/api/tasks", content=b" " * 2049, headers=ALICE)
        assert big.status_code == 413
        assert big.json() == {"detail": "request body too large: the limit is 2048 bytes"}


# authentication before the body ------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer not-a-jwt"}, {"authorization": "Basic YTpi"}],
    ids=["no-token", "bad-token", "not-bearer"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/tasks"),
        ("PATCH", "/api/tasks/1"),
        ("POST", "/api/conversations"),
        ("POST", "/api/conversations/1/messages"),
    ],
)
async def test_no_body_is_read_without_a_valid_token(
    api_app: FastAPI, headers: dict[str, str], method: str, path: str
) -> None:
    receive = Recorder(b'{"title": "x"}')
    headers = {**headers, "content-type": "application/json", "content-length": "14"}
    status, out, body = await call_asgi(api_app, method, path, headers, receive)
    assert status == 401
    assert out["www-authenticate"] == "Bearer"
    assert json.loads(body)["detail"] in ("Not authenticated", "Invalid or expired token")
    assert receive.calls == 0


async def test_anonymous_large_body_is_a_401_unread(api_app: FastAPI) -> None:
    receive = Recorder(HOSTILE["nested-tags"])
    headers = {"content-type": "application/json", "content-length": str(len(receive.body))}
    status, _, _ = await call_asgi(api_app, "POST", "/api/tasks", headers, receive)
    assert (status, receive.calls) == (401, 0)


# short 422s --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tags", "nested-tags", "unknown-fields", "long-title"])
async def test_422_echoes_little_of_a_large_body(client: httpx.AsyncClient, name: str) -> None:
    body = HOSTILE[name]
    assert len(body) <= LIMIT
    r = await client.post(
        "/api/tasks", content=body, headers={**ALICE, "content-type": "application/json"}
    )
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 4096
    errors = r.json()["detail"]
    assert 1 <= len(errors) <= MAX_ERRORS + 1
    for error in errors:
        assert len(json.dumps(error.get("input"))) <= MAX_ECHO_CHARS + 10


async def test_422_lists_at_most_max_errors(client: httpx.AsyncClient) -> None:
    # Thirty unknown fields: under the "too many fields" cut (MAX_UNKNOWN_FIELDS), so one
    # error each.
    body = {"title": "a", **{f"k{i}": i for i in range(30)}}
    r = await client.post("/api/tasks", json=body, headers=ALICE)
    assert r.status_code == 422
    errors = r.json()["detail"]
    assert len(errors) == MAX_ERRORS + 1
    assert [e["type"] for e in errors[:MAX_ERRORS]] == ["extra_forbidden"] * MAX_ERRORS
    assert errors[-1] == {
        "type": "too_many_errors",
        "loc": ["body"],
        "msg": f"{30 - MAX_ERRORS} more errors not shown",
    }


async def test_short_inputs_are_echoed_whole(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/tasks", json={"title": "a", "tags": ["x" * 51]}, headers=ALICE)
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert (error["loc"], error["input"]) == (["body", "tags", 0], "x" * 51)
    assert error["ctx"] == {"max_length": 50}


# the event loop ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_a_concurrent_request_is_served_while_a_large_body_is_rejected(
    client: httpx.AsyncClient, name: str
) -> None:
    """The largest invalid body costs the event loop little: a GET sent meanwhile answers
    well within half a second (generous: the parse and the 422 take milliseconds)."""
    await client.post("/api/tasks", json={"title": "mine"}, headers=ALICE)
    body = HOSTILE[name]
    started = asyncio.Event()
    stalls: list[float] = []

    async def heartbeat() -> None:
        # The longest the loop went without running this task: the largest block.
        started.set()
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    async def hostile() -> httpx.Response:
        return await client.post(
            "/api/tasks", content=body, headers={**ALICE, "content-type": "application/json"}
        )

    async def reader() -> tuple[float, httpx.Response]:
        await started.wait()
        t0 = time.perf_counter()
        r = await client.get("/api/tasks", headers=ALICE)
        return time.perf_counter() - t0, r

    beat = asyncio.create_task(heartbeat())
    try:
        bad, (elapsed, good) = await asyncio.gather(hostile(), reader())
    finally:
        beat.cancel()
    assert bad.status_code in (400, 422), bad.text[:200]
    assert (good.status_code, good.json()["total"]) == (200, 1)
    assert elapsed < 0.5, f"GET took {elapsed:.3f}s"
    assert max(stalls) < 0.5, f"the loop was blocked for {max(stalls):.3f}s"
