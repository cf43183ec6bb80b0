"""A request body limit enforced while the body is read, before anything parses it.

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=1 << 20)   # or NeonDB.install(...)

Pure ASGI, so it costs nothing on a request within the limit and needs no framework:

* a declared `Content-Length` over the limit is answered 413 before the app runs: not a
  byte of the body is read;
* a body without a length (chunked) is counted as the app reads it; the read that crosses
  the limit raises `RequestBodyTooLarge`, an HTTP 413 exception that a Starlette/FastAPI
  app's handlers turn into the response (FastAPI re-raises HTTP exceptions met while reading
  a body), and that this middleware answers itself when nothing else did.

The 413 says `Connection: close`: the rest of the body is never read, so the connection
cannot carry another request.
"""

from __future__ import annotations

import json

from neondb.extras import missing_extra

try:
    from starlette.exceptions import HTTPException
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as e:
    raise missing_extra("fastapi", "neondb.body_limit (BodyLimitMiddleware)") from e

__all__ = ["BodyLimitMiddleware", "RequestBodyTooLarge", "too_large_detail"]


def too_large_detail(max_body_bytes: int) -> str:
    """The one-line detail of the 413."""
    return f"request body too large: the limit is {max_body_bytes} bytes"


class RequestBodyTooLarge(HTTPException):
    """Raised by the counting `receive` when the body passes the limit (HTTP 413)."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(
            status_code=413,
            detail=too_large_detail(max_body_bytes),
            headers={"Connection": "close"},
        )


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            # A malformed value is the HTTP server's to refuse; here it only means "unknown".
            return int(value) if value.strip().isdigit() else None
    return None


class BodyLimitMiddleware:
    """413 for a request body over `max_body_bytes`, declared or counted while read."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must be 0 or more")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": too_large_detail(self.max_body_bytes)}).encode()
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await self._reject(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestBodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except RequestBodyTooLarge:
            if started:
                raise
            await self._reject(send)

    def __repr__(self) -> str:
        return f"BodyLimitMiddleware(max_body_bytes={self.max_body_bytes})"
