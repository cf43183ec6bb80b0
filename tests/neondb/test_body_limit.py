"""neondb.body_limit: a 413 before the app runs for a declared length over the limit, and
while the body is read for one without a length; bodies within the limit pass whole."""

from __future__ import annotations

import json
from typing import Any

import pytest

from neondb import BodyLimitMiddleware
from neondb.body_limit import RequestBodyTooLarge, too_large_detail

LIMIT = 1000


class BodyReader:
    """A bare ASGI app that reads the whole body and answers its length."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


async def call(
    app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[bytes, bytes], bytes, int]:
    """Status, headers, body, and how many chunks the app (or the middleware) pulled."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        i = pulled - 1
        return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], dict(sent[0]["headers"]), body, pulled


async def test_declared_length_over_the_limit_is_refused_before_the_app_runs() -> None:
    inner = BodyReader()
    app = BodyLimitMiddleware(inner, max_body_bytes=LIMIT)
    status, headers, body, pulled = await call(app, [b"x"], [(b"content-length", b"1001")])
    assert (status, inner.calls, pulled) == (413, 0, 0)
    assert json.loads(body) == {"detail": too_large_detail(LIMIT)}
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"


async def test_body_without_a_length_is_counted_while_read() -> None:
    inner = BodyReader()
    app = BodyLimitMiddleware(inner, max_body_bytes=LIMIT)
    status, _, body, pulled = await call(app, [b"x" * 400] * 10, [])
    # The third chunk crosses the limit: nothing after it is read.
    assert (status, inner.calls, pulled) == (413, 1, 3)
    assert json.loads(body) == {"detail": too_large_detail(LIMIT)}


@pytest.mark.parametrize(
    ("chunks", "headers"),
    [
        ([b"x" * 500, b"x" * 500], []),
        ([b"x" * 1000], [(b"content-length", b"1000")]),
        ([b""], []),
        ([b"x" * 10], [(b"content-length", b"not a number")]),
    ],
    ids=["chunked-at-the-limit", "declared-at-the-limit", "empty", "bad-length"],
)
async def test_bodies_within_the_limit_pass_whole(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> None:
    app = BodyLimitMiddleware(BodyReader(), max_body_bytes=LIMIT)
    status, _, body, _ = await call(app, chunks, headers)
    assert (status, body) == (200, str(sum(map(len, chunks))).encode())


async def test_an_app_that_handles_the_exception_answers_itself() -> None:
    async def handling(scope: Any, receive: Any, send: Any) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except RequestBodyTooLarge as e:
            status = 418 if e.status_code == 413 else 500
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"mine"})

    app = BodyLimitMiddleware(handling, max_body_bytes=LIMIT)
    status, _, body, _ = await call(app, [b"x" * 600] * 3, [])
    assert (status, body) == (418, b"mine")


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await BodyLimitMiddleware(inner, max_body_bytes=0)({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        BodyLimitMiddleware(BodyReader(), max_body_bytes=-1)
