"""Fair shares: at most `limit` requests at once per key (a user, a tenant, an API key).

Every request holds a pooled connection while it runs, so one caller firing many slow
requests at once can take the whole pool and make everyone else wait for it. A
`KeyedLimiter` caps what one key holds; the excess waits up to `queue_timeout_s` for one
of its own slots (a burst is smoothed, not refused), then fails with `FairShareExceeded`.
Other keys never wait behind it. A key that holds and awaits nothing is forgotten, so
memory follows the keys active now, not every key ever seen.

With FastAPI (`neondb[fastapi]`), `limit_per_key(key, limiter)` makes the dependency::

    async def user_id(user: CurrentUser) -> str:
        return user.id

    per_user = limit_per_key(user_id, lambda request: request.app.state.user_limiter)
    router = APIRouter(dependencies=[Depends(per_user, scope="function")],
                       responses=FAIR_SHARE_RESPONSES)

It answers 429 `{"detail": ...}` with `Retry-After` when the key is over its share.
"""

# No `from __future__ import annotations` here: FastAPI reads the annotations of the
# dependency `limit_per_key` builds at run time, and they name objects local to it.

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from neondb.extras import missing_extra

__all__ = [
    "FAIR_SHARE_RESPONSES",
    "FairShareExceeded",
    "KeyedLimiter",
    "limit_per_key",
]

FAIR_SHARE_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "too many of your requests at once; see `Retry-After`",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"detail": {"type": "string"}},
                    "required": ["detail"],
                }
            }
        },
    },
}
"""The 429 for a route's OpenAPI `responses`."""


class FairShareExceeded(Exception):
    """The key already runs its `limit` and no slot freed within the queue timeout."""

    public_detail = "too many concurrent requests, retry later"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(self.public_detail)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, never 0 (a client must not spin)."""
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass
class _Slots:
    active: int = 0
    # Waiters in arrival order; a freed slot is handed to the first one (no barging).
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


class KeyedLimiter:
    """At most `limit` holders per key; `limit` 0 means no limit.

    Not thread-safe: one per event loop (an app's state), like the pool it protects.
    """

    def __init__(
        self, limit: int, *, queue_timeout_s: float = 1.0, retry_after_s: float = 1.0
    ) -> None:
        if limit < 0:
            raise ValueError("limit must be 0 (no limit) or more")
        if queue_timeout_s < 0:
            raise ValueError("queue_timeout_s must not be negative")
        self.limit = limit
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self._keys: dict[Hashable, _Slots] = {}

    def __len__(self) -> int:
        """Keys tracked now: those holding or awaiting a slot."""
        return len(self._keys)

    def active(self, key: Hashable) -> int:
        slots = self._keys.get(key)
        return slots.active if slots else 0

    def waiting(self, key: Hashable) -> int:
        slots = self._keys.get(key)
        return len(slots.waiting) if slots else 0

    @asynccontextmanager
    async def slot(self, key: Hashable) -> AsyncIterator[None]:
        """Hold one of `key`'s slots for the block; FairShareExceeded if none frees in time."""
        await self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    async def acquire(self, key: Hashable) -> None:
        """Take one of `key`'s slots, waiting up to `queue_timeout_s` (then
        FairShareExceeded). Every successful `acquire` needs exactly one `release`."""
        if not self.limit:
            return
        slots = self._keys.setdefault(key, _Slots())
        if slots.active < self.limit and not slots.waiting:
            slots.active += 1
            return
        if not self.queue_timeout_s:
            self._forget_if_idle(key, slots)
            raise FairShareExceeded(self.retry_after_s)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slots.waiting.append(turn)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await turn
        except BaseException as e:
            if turn.done() and not turn.cancelled():
                # The slot was handed over just as the wait ended: pass it on.
                self.release(key)
            else:
                turn.cancel()
                if turn in slots.waiting:  # `release` may have dropped it, done, already
                    slots.waiting.remove(turn)
                self._forget_if_idle(key, slots)
            if isinstance(e, TimeoutError):
                raise FairShareExceeded(self.retry_after_s) from None
            raise
        # Handed over by `release`: `active` already counts this holder.

    def release(self, key: Hashable) -> None:
        """Give back a slot `acquire` took: to the first waiter of `key`, else freed."""
        if not self.limit:
            return
        slots = self._keys[key]
        while slots.waiting:
            turn = slots.waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot moves to that waiter, `active` unchanged
                return
        slots.active -= 1
        self._forget_if_idle(key, slots)

    def _forget_if_idle(self, key: Hashable, slots: _Slots) -> None:
        # `slots` may already be gone, and `key` started afresh by a newer caller.
        if not slots.active and not slots.waiting and self._keys.get(key) is slots:
            del self._keys[key]


def limit_per_key(
    key: Callable[..., Any],
    limiter: KeyedLimiter | Callable[[Any], KeyedLimiter],
) -> Callable[..., AsyncIterator[None]]:
    """A FastAPI dependency (with `yield`) holding one of the caller's slots for the request.

    `key` is itself a dependency (it may depend on the authenticated user, a header...) and
    returns the hashable key. `limiter` is a `KeyedLimiter`, or a function of the `Request`
    returning one (e.g. from `request.app.state`, when the app builds it from its settings).
    Use it with `Depends(..., scope="function")` so the slot is freed before the response
    is sent, after the session dependencies have returned their connection.
    """
    try:
        from fastapi import Depends, HTTPException, Request
    except ImportError as e:
        raise missing_extra("fastapi", "neondb.fairness.limit_per_key") from e

    def limiter_of(request: Request) -> KeyedLimiter:
        return limiter if isinstance(limiter, KeyedLimiter) else limiter(request)

    async def fair_share(
        request: Request,
        k: Any = Depends(key),  # noqa: B008 (FastAPI's dependency declaration)
    ) -> AsyncIterator[None]:
        held = limiter_of(request)
        try:
            await held.acquire(k)
        except FairShareExceeded as e:
            raise HTTPException(
                status_code=429,
                detail=e.public_detail,
                headers={"Retry-After": e.retry_after_header},
            ) from None
        try:
            yield
        finally:
            held.release(k)

    return fair_share
