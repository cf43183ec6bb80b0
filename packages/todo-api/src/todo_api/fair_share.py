"""Each user's fair share of the pool: `APP_USER_MAX_CONCURRENCY` requests at once.

Every `/api/...` route holds a pooled connection while it runs; without a share, one user
firing many slow searches at once makes every other user wait for the pool. The limiter
(`neondb.fairness.KeyedLimiter`, keyed on the token's `sub`) lives on `app.state` so each
app has its own, built from its settings; the excess waits up to `APP_USER_QUEUE_TIMEOUT_S`
for one of the user's own slots, then gets 429 with `Retry-After`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from neondb.fairness import KeyedLimiter, limit_per_key
from todo_api.auth import CurrentUser
from todo_api.settings import AppSettings

__all__ = ["PER_USER", "user_limiter"]


def user_limiter(settings: AppSettings) -> KeyedLimiter:
    """The per-user limiter `create_app` keeps on `app.state.user_limiter`."""
    return KeyedLimiter(
        settings.user_max_concurrency,
        queue_timeout_s=settings.app_user_queue_timeout_s,
        retry_after_s=1.0,
    )


async def _user_id(user: CurrentUser) -> str:
    return user.id


def _limiter(request: Request) -> KeyedLimiter:
    limiter = request.app.state.user_limiter
    assert isinstance(limiter, KeyedLimiter)
    return limiter


# Function scope: the slot is given back before the response is sent, right after the
# session dependencies (entered after this one) have returned their connection.
PER_USER: Any = Depends(limit_per_key(_user_id, _limiter), scope="function")
"""A router dependency: one of the authenticated user's slots for the request."""
