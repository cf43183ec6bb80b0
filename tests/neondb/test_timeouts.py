"""Timeouts: statement_timeout and its client backstop, the connect timeout against a
server that never answers, and pool exhaustion. Each fails within a bound, never hangs."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc
from neondb_support import (
    active_statements,
    backend_pids,
    cut,
    make_settings,
    open_database,
    proxied_url,
    wait_until,
)
from sqlalchemy import text

from neondb import (
    Database,
    DatabaseUnavailableError,
    PoolExhaustedError,
    QueryTimeoutError,
    WriteOutcomeUnknownError,
)
from neondb.errors import retry_after_header
from neondb.proxy import FaultProxy
from neondb.testing import admin_execute

SLEEP = text("SELECT pg_sleep(5)")
PASSWORD = "c0nnect-pw-77e1"


@pytest.mark.parametrize("kind", ["read_session", "session"])
async def test_statement_timeout_cancels_and_the_connection_survives(
    neondb_database_url: str, driver: str, kind: str
) -> None:
    async with open_database(
        neondb_database_url,
        db_driver=driver,
        db_statement_timeout_s=1,
        db_pool_min=1,
        db_pool_max=1,
    ) as db:
        started = time.monotonic()
        with pytest.raises(QueryTimeoutError) as info:
            async with getattr(db, kind)() as s:
                await s.execute(SLEEP)
        elapsed = time.monotonic() - started
        assert elapsed < 4.5  # the server's 1 s, well before pg_sleep's 5
        assert elapsed >= 0.9  # and not before it: the server's timeout, not something else
        assert info.value.status_code == 504
        assert isinstance(info.value, sa_exc.OperationalError)
        # The same (only) connection answers the next statement.
        async with getattr(db, kind)() as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1
        assert db.connections_opened == 1
        assert db.pool_stats()["primary"]["checked_out"] == 0


def local_process_name(pid: int) -> str:
    comm = Path(f"/proc/{pid}/comm")
    return comm.read_text().strip() if comm.exists() else ""


async def test_client_backstop_when_the_server_never_answers(neondb_database_url: str) -> None:
    """The server's process is frozen (SIGSTOP): neither the statement timeout nor a cancel
    can answer. The client gives up at the backstop and drops the connection.

    asyncpg only: psycopg, interrupted, itself waits up to 5 s for a cancel request and 5 s
    more for the server, so its bound is the backstop plus 10 s."""
    async with open_database(
        neondb_database_url,
        db_driver="asyncpg",
        db_statement_timeout_s=0.5,
        db_pool_min=1,
        db_pool_max=1,
    ) as db:
        assert db.settings.statement_backstop_s == 2.5
        (pid,) = await backend_pids(db)
        # Only ever freeze a local PostgreSQL backend (TEST_DATABASE_URL may be remote).
        name = local_process_name(pid)
        assert name.startswith("postgres"), f"the server must run on this machine ({name!r})"
        opened = db.connections_opened
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(QueryTimeoutError):
                async with db.read_session() as s:
                    await s.execute(text("SELECT 1"))
            assert time.monotonic() - started < 8
        finally:
            os.kill(pid, signal.SIGCONT)
        # The connection in an unknown state was not returned to the pool.
        async with db.read_session() as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1
        assert db.connections_opened == opened + 1
        assert pid not in await backend_pids(db)


# the backstop's verdict: a write's outcome is unknown, a read timed out ------------------------

SLOW_INSERT = text("INSERT INTO backstop (n) SELECT 1 FROM pg_sleep(3)")


@pytest.mark.parametrize(
    ("kind", "sql", "expected"),
    [
        ("autocommit", SLOW_INSERT, WriteOutcomeUnknownError),
        ("autocommit", text("SELECT pg_sleep(3)"), QueryTimeoutError),
        ("read_session", text("SELECT pg_sleep(3)"), QueryTimeoutError),
        # In a transaction nothing commits without COMMIT: the outcome is known.
        ("session", SLOW_INSERT, QueryTimeoutError),
    ],
    ids=["autocommit-write", "autocommit-read", "read-session", "transaction-write"],
)
async def test_client_backstop_verdict(
    neondb_schema_url: str, driver: str, kind: str, sql: Any, expected: type[Exception]
) -> None:
    """The server's timeout is far away (30 s); the session's backstop (its info key
    `neondb.backstop_s`) is 0.5 s. When it gives up, an autocommit write may still commit
    on the server: WriteOutcomeUnknownError (503). A read did nothing: QueryTimeoutError
    (504)."""
    admin_execute(neondb_schema_url, "CREATE TABLE backstop (n int)")
    async with open_database(
        neondb_schema_url, db_driver=driver, db_statement_timeout_s=30, db_pool_max=1
    ) as db:
        opened = db.connections_opened

        async def run() -> None:
            async with getattr(db, kind)() as s:
                s.info["neondb.backstop_s"] = 0.5
                await s.execute(sql)

        started = time.monotonic()
        with pytest.raises(expected) as info:
            await run()
        elapsed = time.monotonic() - started
        assert type(info.value) is expected
        assert info.value.status_code == (503 if expected is WriteOutcomeUnknownError else 504)
        assert isinstance(info.value.__cause__, TimeoutError)  # the backstop, not the server
        assert 0.45 <= elapsed < 2.9  # the backstop's 0.5 s, before pg_sleep's 3
        # The connection in an unknown state was dropped; a fresh one serves.
        assert db.pool_stats()["primary"]["checked_out"] == 0
        async with db.read_session() as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1
        assert db.connections_opened == opened + 1
    # Whatever the server still does with the statement ends before the schema is dropped.
    await wait_until(lambda: active_statements(neondb_schema_url, "pg_sleep(3)") == 0)


# connect timeout ------------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


async def test_connect_timeout_at_start_against_a_silent_port(
    silent_port: int, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://u:{PASSWORD}@127.0.0.1:{silent_port}/db?sslmode=disable"
    db = Database(
        make_settings(url, db_driver=driver, db_connect_timeout_s=0.5, db_retry_attempts=3)
    )
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.start(wait_s=0)
    # Retries stop at the deadline DB_CONNECT_TIMEOUT_S x DB_RETRY_ATTEMPTS, here after the
    # first attempt for psycopg (libpq raises a connect timeout under 2 s to 2 s); nowhere
    # near the 10 s default.
    assert time.monotonic() - started < 6
    assert info.value.status_code == 503
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value)
    assert "u:***@127.0.0.1" in caplog.text  # the start-up log line, masked
    assert PASSWORD not in caplog.text


async def test_connect_timeout_while_serving(
    proxy: FaultProxy, neondb_database_url: str, driver: str
) -> None:
    url = proxied_url(proxy, neondb_database_url)
    async with open_database(
        url, db_driver=driver, db_connect_timeout_s=1, db_retry_attempts=1
    ) as db:
        proxy.mode = "stall"
        await cut(proxy)  # the pooled connection dies; its replacement meets the stall
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as info:
            async with db.read_session() as s:
                await s.execute(text("SELECT 1"))
        assert time.monotonic() - started < 6
        assert info.value.status_code == 503
        proxy.mode = "pass"
        async with db.read_session() as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1


# pool exhaustion ------------------------------------------------------------------------------


async def test_pool_exhaustion_is_a_503_after_the_pool_timeout(
    neondb_database_url: str, driver: str
) -> None:
    async with open_database(
        neondb_database_url, db_driver=driver, db_pool_max=2, db_pool_timeout_s=0.5
    ) as db:
        async with db.session() as first, db.read_session() as second:
            await first.execute(text("SELECT 1"))
            await second.execute(text("SELECT 1"))
            assert db.pool_stats()["primary"]["checked_out"] == 2
            started = time.monotonic()
            with pytest.raises(PoolExhaustedError) as info:
                async with db.autocommit() as third:
                    await third.execute(text("SELECT 1"))
            elapsed = time.monotonic() - started
        assert 0.4 < elapsed < 5  # waited DB_POOL_TIMEOUT_S, then gave up
        err = info.value
        assert isinstance(err, sa_exc.TimeoutError)  # what existing handlers catch
        assert isinstance(err, DatabaseUnavailableError)
        assert err.status_code == 503
        assert retry_after_header(err) == "1"
        assert err.public_detail == "database busy, retry later"
        # Released: the pool serves again.
        async with db.read_session() as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1
        assert db.pool_stats()["primary"]["checked_out"] == 0
