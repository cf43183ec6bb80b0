"""Engines: how connections are opened, pooled and checked, for asyncpg and psycopg.

Round trips are the cost that matters on Neon, so:

* no `pool_pre_ping`: a pooled connection is checked for death on checkout *without* a round
  trip (asyncpg notices the server's goodbye on its own; for psycopg the socket is polled),
  and a dead one is replaced before any statement is sent;
* `statement_timeout` is set once per physical connection on direct endpoints; behind a
  transaction pooler, where session state does not stick, it is `SET LOCAL` at the start of
  each explicit transaction (single statements rely on the role default, see `Database`);
* the pool is fixed-size (`max_overflow=0`): overflow connections would be closed and
  reopened under steady load, each paying a TLS handshake and a login.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event, exc, pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from neondb.errors import (
    DatabaseUnavailableError,
    is_login_rejected,
    is_timeout,
    is_transient,
    sqlstate_of,
)
from neondb.resilience import CircuitBreaker, retrying
from neondb.settings import DatabaseSettings, Driver
from neondb.url import DatabaseURL

__all__ = ["build_engine", "connection_is_dead"]

log = logging.getLogger("neondb")

_DIALECTS: dict[Driver, str] = {
    "asyncpg": "postgresql+asyncpg://",
    "psycopg": "postgresql+psycopg://",
}


def _timeout_sql(seconds: float, *, local: bool = False) -> str:
    scope = "LOCAL " if local else ""
    return f"SET {scope}statement_timeout = {round(seconds * 1000)}"


def _opener(
    url: DatabaseURL,
    driver: Driver,
    settings: DatabaseSettings,
    *,
    pooler: bool,
    breaker: CircuitBreaker,
    on_connect: Callable[[], None] | None = None,
) -> Callable[[], Awaitable[Any]]:
    """An async function that opens one driver connection: retried with backoff through
    the circuit breaker, and set up for the endpoint kind."""
    spec = url.spec(driver, connect_timeout_s=settings.db_connect_timeout_s)
    timeout_s = settings.db_statement_timeout_s
    setup = None if pooler or not timeout_s else timeout_s

    async def open_asyncpg() -> Any:
        import asyncpg

        kwargs = dict(spec.kwargs)
        if pooler:
            kwargs["statement_cache_size"] = 0  # PgBouncer: named statements do not survive
        conn = await asyncpg.connect(**kwargs)
        if setup is not None:
            try:
                await conn.execute(_timeout_sql(setup))
            except BaseException:
                conn.terminate()  # died while being set up (terminated, server stopping)
                raise
        return conn

    async def open_psycopg() -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            spec.kwargs["conninfo"],
            prepare_threshold=None if pooler else 5,
            autocommit=True,
        )
        try:
            if setup is not None:
                await conn.execute(_timeout_sql(setup))
            await conn.set_autocommit(False)
        except BaseException:
            await conn.close()  # died while being set up (terminated, server stopping)
            raise
        return conn

    open_one = open_asyncpg if driver == "asyncpg" else open_psycopg

    async def connect() -> Any:
        try:
            async for attempt in retrying(
                settings.db_retry_attempts,
                settings.db_retry_backoff_s,
                deadline_s=settings.db_connect_timeout_s * settings.db_retry_attempts,
                timeouts=False,
            ):
                with attempt:
                    conn = await breaker.call(open_one)
        except Exception as e:
            if is_transient(e) or is_timeout(e) or is_login_rejected(e):
                if isinstance(e, DatabaseUnavailableError):
                    raise
                # The driver's message names host and port at most, never the password.
                why = type(e).__name__
                if is_login_rejected(e):
                    # The server's words ('database "x" does not exist', 'password
                    # authentication failed for user "u"') name no secret, and say what to fix.
                    why = f"{sqlstate_of(e)} {str(e).strip().splitlines()[-1][:200]}"
                raise DatabaseUnavailableError(
                    f"cannot connect to {url.host or 'the database'}: {why}", orig=e
                ) from e
            raise
        if on_connect:
            on_connect()
        return conn

    return connect


def connection_is_dead(dbapi_connection: Any) -> bool:
    """True when an idle pooled connection is already known to be closed, found without a
    round trip: a terminated backend sends an error and closes the socket."""
    driver_conn = getattr(dbapi_connection, "driver_connection", None)
    if driver_conn is None:
        return False
    is_closed = getattr(driver_conn, "is_closed", None)
    if callable(is_closed):  # asyncpg: its protocol saw the EOF while idle
        return bool(is_closed())
    pgconn = getattr(driver_conn, "pgconn", None)  # psycopg: poll the socket, send nothing
    if pgconn is None:
        return False
    if driver_conn.closed or driver_conn.broken:
        return True
    try:
        readable, _, _ = select.select([pgconn.socket], [], [], 0)
        if readable:
            # An idle connection has nothing to read unless the server said goodbye (or a
            # notice); consume it and see whether the connection survived.
            pgconn.consume_input()
            from psycopg import pq

            return bool(pgconn.status != pq.ConnStatus.OK)
    except Exception:
        return True
    return False


def build_engine(
    url: DatabaseURL,
    driver: Driver,
    settings: DatabaseSettings,
    *,
    pooler: bool,
    breaker: CircuitBreaker,
    on_connect: Callable[[], None] | None = None,
) -> AsyncEngine:
    """An AsyncEngine for `url`: pooled (fixed size) or NullPool in serverless mode."""
    connect = _opener(url, driver, settings, pooler=pooler, breaker=breaker, on_connect=on_connect)
    adapter_kw: dict[str, Any] = {"async_creator_fn": connect}
    if driver == "asyncpg" and pooler:
        adapter_kw["prepared_statement_cache_size"] = 0
    engine_ref: list[AsyncEngine] = []

    def creator() -> Any:
        # SQLAlchemy's documented way to pass adapter arguments along with an async creator.
        return engine_ref[0].sync_engine.dialect.dbapi.connect(**adapter_kw)  # type: ignore[union-attr]

    options: dict[str, Any] = {
        "creator": creator,
        "echo": settings.db_echo,
        "pool_pre_ping": False,
        "hide_parameters": True,
    }
    if settings.db_serverless:
        options["poolclass"] = pool.NullPool
    else:
        options.update(
            pool_size=settings.db_pool_max,
            max_overflow=0,
            pool_timeout=settings.db_pool_timeout_s,
            pool_recycle=settings.db_pool_recycle_s,
            pool_use_lifo=True,
        )
    engine = create_async_engine(_DIALECTS[driver], **options)
    engine_ref.append(engine)

    @event.listens_for(engine.sync_engine, "checkout")
    def _check_alive(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if connection_is_dead(dbapi_conn):
            log.info("replacing a pooled connection the server had closed")
            # The pool discards it and opens a fresh one before any statement is sent.
            raise exc.DisconnectionError("pooled connection was closed by the server")

    if pooler and settings.db_statement_timeout_s:
        sql = _timeout_sql(settings.db_statement_timeout_s, local=True)

        @event.listens_for(engine.sync_engine, "begin")
        def _local_timeout(conn: Any) -> None:
            # Reads the option, not the server: get_isolation_level() would cost a round trip.
            if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                conn.exec_driver_sql(sql)

    return engine
