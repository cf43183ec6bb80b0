"""Read-your-writes with a lagging replica: who must read from the primary.

A replica applies the primary's commits some time later. A client that has just written
and reads at once must see its write, so its reads go to the primary for a while:

* a session that wrote pins the rest of its request (or `primary_reads()` block) to the
  primary;
* a client that wrote is pinned for `DB_READ_YOUR_WRITES_S` seconds (default 5), on this
  instance. The client is its `Authorization` header (hashed; the token itself is never
  kept), or whatever the app's `client_key` says;
* a client may ask for it: `X-Read-Consistency: primary` on a request, or
  `db.read_session(primary=True)` / `async with primary_reads():` in code.

None of this costs a round trip: a pinned read is one statement on the primary, an unpinned
read one statement on the replica. It needs no LSN from the write either (that would be a
round trip per write). The price: the window is a bound on the lag, not a measure of it;
and the memory is per instance (a client whose next request reaches another instance should
send the header, or the load balancer should keep clients on one instance).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONSISTENCY_HEADER",
    "ReadContext",
    "ReadRoutingMiddleware",
    "RecentWriters",
    "current_read_context",
    "primary_reads",
]

CONSISTENCY_HEADER = "x-read-consistency"
MAX_REMEMBERED = 10_000


@dataclass(slots=True)
class ReadContext:
    """Per request (or `primary_reads()` block): the client, whether it asked for primary
    reads, and whether it wrote."""

    client: int | None = None
    primary: bool = False
    wrote: bool = False


_context: ContextVar[ReadContext | None] = ContextVar("neondb_read_context", default=None)


def current_read_context() -> ReadContext | None:
    return _context.get()


@contextmanager
def primary_reads(client: int | None = None) -> Iterator[ReadContext]:
    """Every read session opened inside goes to the primary."""
    token = _context.set(ReadContext(client=client, primary=True))
    try:
        yield _context.get()  # type: ignore[misc]
    finally:
        _context.reset(token)


class RecentWriters:
    """Clients that wrote less than `window_s` ago. Bounded: past MAX_REMEMBERED entries
    the oldest are forgotten (their window has most likely passed)."""

    def __init__(self, window_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._until: dict[int, float] = {}

    def wrote(self, client: int) -> None:
        if self.window_s <= 0:
            return
        self._until.pop(client, None)  # re-inserted last: the dict stays in expiry order
        self._until[client] = self.clock() + self.window_s
        if len(self._until) > MAX_REMEMBERED:
            # Every window is as long, so insertion order is expiry order: drop the oldest.
            for key in list(self._until)[: MAX_REMEMBERED // 2]:
                del self._until[key]

    def pinned(self, client: int) -> bool:
        until = self._until.get(client)
        if until is None:
            return False
        if until > self.clock():
            return True
        del self._until[client]
        return False


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def authorization_key(scope: Scope) -> int | None:
    """The client is its Authorization header: the same token, the same client."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return hash(value)
    return None


class ReadRoutingMiddleware:
    """Pure ASGI: gives each HTTP request a `ReadContext` (its client key, and whether it
    asked for primary reads with `X-Read-Consistency: primary`)."""

    def __init__(
        self, app: ASGIApp, client_key: Callable[[Scope], int | None] = authorization_key
    ) -> None:
        self.app = app
        self.client_key = client_key

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        primary = False
        for name, value in scope.get("headers", ()):
            if name == b"x-read-consistency":
                primary = value.strip().lower() == b"primary"
        token = _context.set(ReadContext(client=self.client_key(scope), primary=primary))
        try:
            await self.app(scope, receive, send)
        finally:
            _context.reset(token)
