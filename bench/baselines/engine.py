"""An SQLAlchemy async engine on asyncpg for `BENCH_DSN`, for the SQLAlchemy baselines.

asyncpg connects from the DSN itself (`async_creator`): SQLAlchemy's asyncpg dialect would pass
libpq query parameters (`sslmode`, `host=/socket/dir`) to `asyncpg.connect()` as keywords."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.baselines.common import dsn

__all__ = ["engine"]


def engine(**pool: Any) -> AsyncEngine:
    url = dsn()

    async def connect() -> Any:
        return await asyncpg.connect(url)

    return create_async_engine("postgresql+asyncpg://", async_creator=connect, **pool)
