"""neondb.fastapi's lifespan: what it says about code FastAPI will not run, how your own
start-up code runs beside it, and a start-up failure told in one line."""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from neondb_support import free_port, make_settings
from sqlalchemy import text

from neondb import DatabaseUnavailableError, NeonDB


async def test_on_event_handlers_get_a_warning(
    neondb_schema_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    neon = NeonDB(make_settings(neondb_schema_url))
    app = FastAPI(lifespan=neon.lifespan)
    ran: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # on_event is deprecated

        @app.on_event("startup")
        async def create_tables() -> None:
            ran.append("create_tables")

    with caplog.at_level(logging.WARNING, logger="neondb"):
        async with LifespanManager(app):
            pass
    assert ran == []  # FastAPI really does not run it
    warning = [r.getMessage() for r in caplog.records if "on_event" in r.getMessage()]
    assert len(warning) == 1
    assert "create_tables" in warning[0]
    assert "wraps neon.lifespan" in warning[0]


async def test_own_start_up_code_in_a_lifespan_that_wraps_neondbs(
    neondb_schema_url: str,
) -> None:
    neon = NeonDB(make_settings(neondb_schema_url))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with neon.lifespan(app):
            # The database is ready here: create tables, seed, warm caches.
            async with neon.db.autocommit() as s:
                await s.execute(text("CREATE TABLE IF NOT EXISTS made_at_start (id int)"))
            yield

    app = FastAPI(lifespan=lifespan)
    async with LifespanManager(app), neon.db.read_session() as s:
        found = await s.scalar(text("SELECT to_regclass('made_at_start') IS NOT NULL"))
    assert found is True


async def test_start_up_failure_is_one_line_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql://app:pw@127.0.0.1:{free_port()}/db"
    neon = NeonDB(make_settings(url, db_startup_timeout_s=0.5, db_retry_attempts=1))
    app = FastAPI(lifespan=neon.lifespan)
    with caplog.at_level(logging.INFO, logger="neondb"), pytest.raises(DatabaseUnavailableError):
        async with LifespanManager(app):
            pass
    failed = [r for r in caplog.records if r.getMessage().startswith("start-up failed")]
    assert len(failed) == 1
    assert not failed[0].exc_info  # the traceback only at debug level
    assert "\n" not in failed[0].getMessage()
    assert "DB_STARTUP_TIMEOUT_S=0.5" in failed[0].getMessage()
