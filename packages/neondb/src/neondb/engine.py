"""Engines: how connections are opened, pooled and checked, for asyncpg and psycopg.

Round trips are the cost that matters on Neon, so:

* no `pool_pre_ping`: a pooled connection is checked for death on checkout *without* a round
  trip (asyncpg notices the server's goodbye on its own; for psycopg the socket is polled),
  and a dead one is replaced before any statement is sent;
* `statement_timeout` is set once per physical connection on direct endpoints; behind a
  transaction pooler, where session state does not stick, it is `SET LOCAL` at the start of
  each explicit transaction (single statements rely on the role default, see `Database`);
* the pool is fixed-size (`max_overflow=0`): overflow connections would be closed and
  reopened under steady load, each paying a TLS handshake and a login;
* sessions speak UTC (`TimeZone=UTC`), whatever the server's or the role's default: psycopg
  decodes `timestamptz` text in the session's zone, and an instant near year 9999 in UTC
  can be year 10000 in a zone east of it, which Python cannot hold. Sent at login, without
  a round trip: asyncpg as a startup parameter (PgBouncer tracks `TimeZone`), psycopg as
  `options=-c TimeZone=UTC` on a direct endpoint; behind a pooler, where PgBouncer before
  1.20 refuses `options`, psycopg sends one `SET` when a connection opens (PgBouncer keeps
  it for the client, `TimeZone` being one of the parameters it tracks).
* the async pool serves waiters first come, first served (`neondb.fair_pool`).
"""

from __future__ import annotations

import logging
import select
import selectors
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc, pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from neondb.errors import (
    DatabaseUnavailableError,
    NeonDBError,
    is_timeout,
    is_transient,
    sqlstate_of,
)
from neondb.extras import installed, missing_extra
from neondb.fair_pool import FairAsyncQueuePool
from neondb.resilience import CircuitBreaker, retrying
from neondb.settings import DatabaseSettings, Driver
from neondb.url import DatabaseURL

__all__ = ["build_engine", "build_sync_engine", "connection_is_dead"]

log = logging.getLogger("neondb")

_DIALECTS: dict[Driver, str] = {
    "asyncpg": "postgresql+asyncpg://",
    "psycopg": "postgresql+psycopg://",
}


SESSION_TIME_ZONE = "UTC"
_SET_TIME_ZONE = f"SET TimeZone TO '{SESSION_TIME_ZONE}'"


def _utc_conninfo(conninfo: str) -> str:
    """`conninfo` with `-c TimeZone=UTC` added to its `options` (after any given there, such
    as Neon's `endpoint=...` or a `search_path`; the last setting wins)."""
    return _with_option(conninfo, f"-c TimeZone={SESSION_TIME_ZONE}")


def _with_option(conninfo: str, option: str) -> str:
    """`conninfo` with `option` appended to its startup `options` (the last setting wins)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(conninfo)
    given = str(params.get("options") or "").strip()
    params["options"] = f"{given} {option}" if given else option
    return make_conninfo("", **params)


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
    # Serverless: every request opens a connection, so on a direct endpoint the timeout
    # rides in the startup packet instead of costing a `SET` round trip per request.
    startup_ms = str(round(setup * 1000)) if setup is not None and settings.db_serverless else None
    if startup_ms is not None:
        setup = None

    async def open_asyncpg() -> Any:
        import asyncpg

        kwargs = dict(spec.kwargs)
        kwargs["server_settings"] = {
            **kwargs.get("server_settings", {}),
            "TimeZone": SESSION_TIME_ZONE,
        }
        if pooler:
            kwargs["statement_cache_size"] = 0  # PgBouncer: named statements do not survive
        if startup_ms is not None:
            kwargs["server_settings"] = {
                **kwargs.get("server_settings", {}),
                "statement_timeout": startup_ms,
            }
        conn = await asyncpg.connect(**kwargs)
        if setup is not None:
            try:
                await conn.execute(_timeout_sql(setup))
            except BaseException:
                conn.terminate()  # died while being set up (terminated, server stopping)
                raise
        return conn

    conninfo = spec.kwargs.get("conninfo", "")
    if driver == "psycopg" and not pooler:
        conninfo = _utc_conninfo(conninfo)
    if driver == "psycopg" and startup_ms is not None:
        conninfo = _with_option(conninfo, f"-c statement_timeout={startup_ms}")

    async def open_psycopg() -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            conninfo, prepare_threshold=None if pooler else 5, autocommit=True
        )
        try:
            if pooler:
                await conn.execute(_SET_TIME_ZONE)
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
        except (NeonDBError, TypeError, AttributeError, NameError):
            raise  # already ours (an open circuit), or a bug that must not look like an outage
        except Exception as e:
            # Whatever stopped a connection from opening, no statement was sent and the
            # caller did nothing wrong: a 503, never a 500. Only a database that is not
            # there now (down, waking, overloaded, a timeout) is worth retrying.
            transient = is_transient(e) or is_timeout(e)
            # The driver's, server's or TLS layer's last words say what happened and what
            # to fix ("too many clients", "password authentication failed for user ...").
            last = str(e).strip().splitlines()[-1][:200] if str(e).strip() else ""
            why = " ".join(w for w in (type(e).__name__, sqlstate_of(e), last) if w)
            if url.url.password:
                why = why.replace(url.url.password, "***")
            err = DatabaseUnavailableError(
                f"cannot connect to {url.host or 'the database'}: {why}", orig=e
            )
            err.transient = transient
            raise err from e
        if on_connect:
            on_connect()
        return conn

    return connect


def _readable(fd: int) -> bool:
    """Whether `fd` has something to read (or hung up), without waiting. poll() takes any
    descriptor number; select() refuses those >= FD_SETSIZE (1024), which a busy server
    process reaches with client sockets alone."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))  # POLLHUP, POLLERR and POLLNVAL are always reported
    with selectors.DefaultSelector() as selector:  # Windows: no poll(), no such limit
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(0))


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
    import psycopg
    from psycopg import pq

    try:
        fd = pgconn.socket
    except psycopg.OperationalError:
        return True  # libpq has no socket any more: the connection is gone
    try:
        if not _readable(fd):
            return False
        # An idle connection has nothing to read unless the server said goodbye (or a
        # notice); consume it and see whether the connection survived.
        pgconn.consume_input()
    except psycopg.OperationalError:
        return True  # libpq read the end of the connection
    except Exception as e:
        # The check itself failed, not the connection: say so, because every checkout
        # that lands here costs a new connection (a TLS handshake and a login).
        log.warning(
            "could not check a pooled psycopg connection (%s: %s); replacing it",
            type(e).__name__,
            e,
        )
        return True
    return bool(pgconn.status != pq.ConnStatus.OK)


def _engine_options(settings: DatabaseSettings, creator: Callable[[], Any]) -> dict[str, Any]:
    """Pool and logging options shared by the async and the sync engine."""
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
    return options


def _set_local_timeout(engine: Engine, timeout_s: float) -> None:
    """Behind a transaction pooler: SET LOCAL statement_timeout at the start of each
    explicit transaction (autocommit statements rely on the role default)."""
    if not timeout_s:
        return
    sql = _timeout_sql(timeout_s, local=True)

    @event.listens_for(engine, "begin")
    def _local_timeout(conn: Any) -> None:
        # Reads the option, not the server: get_isolation_level() would cost a round trip.
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql(sql)


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
    if not installed(driver):
        raise missing_extra(driver, f"the {driver} driver")
    connect = _opener(url, driver, settings, pooler=pooler, breaker=breaker, on_connect=on_connect)
    adapter_kw: dict[str, Any] = {"async_creator_fn": connect}
    if driver == "asyncpg" and pooler:
        adapter_kw["prepared_statement_cache_size"] = 0
    engine_ref: list[AsyncEngine] = []

    def creator() -> Any:
        # SQLAlchemy's documented way to pass adapter arguments along with an async creator.
        return engine_ref[0].sync_engine.dialect.dbapi.connect(**adapter_kw)  # type: ignore[union-attr]

    options = _engine_options(settings, creator)
    if not settings.db_serverless:
        options["poolclass"] = FairAsyncQueuePool  # waiters served in arrival order
    engine = create_async_engine(_DIALECTS[driver], **options)
    engine_ref.append(engine)

    @event.listens_for(engine.sync_engine, "checkout")
    def _check_alive(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if connection_is_dead(dbapi_conn):
            log.info("replacing a pooled connection the server had closed")
            # The pool discards it and opens a fresh one before any statement is sent.
            raise exc.DisconnectionError("pooled connection was closed by the server")

    if pooler:
        _set_local_timeout(engine.sync_engine, settings.db_statement_timeout_s)
    return engine


def build_sync_engine(url: DatabaseURL, settings: DatabaseSettings, *, pooler: bool) -> Engine:
    """A synchronous psycopg 3 engine for scripts and sync code, with the same URL
    translation, pool sizing, statement_timeout and pooler settings as the async one.
    Connects are retried like the async ones (tenacity); there is no circuit breaker."""
    if not installed("psycopg"):
        raise missing_extra("psycopg", "the synchronous engine (psycopg 3)")
    import psycopg

    conninfo = url.spec("psycopg", connect_timeout_s=settings.db_connect_timeout_s).kwargs[
        "conninfo"
    ]
    if not pooler:
        conninfo = _utc_conninfo(conninfo)
    timeout_s = settings.db_statement_timeout_s

    def creator() -> Any:
        for attempt in Retrying(
            stop=stop_after_attempt(settings.db_retry_attempts),
            wait=wait_random_exponential(multiplier=settings.db_retry_backoff_s, max=5.0),
            retry=retry_if_exception(lambda e: is_transient(e) and not is_timeout(e)),
            reraise=True,
        ):
            with attempt:
                conn = psycopg.connect(
                    conninfo, prepare_threshold=None if pooler else 5, autocommit=True
                )
        if pooler:
            conn.execute(_SET_TIME_ZONE)
        if timeout_s and not pooler:
            conn.execute(_timeout_sql(timeout_s))
        conn.autocommit = False
        return conn

    options = _engine_options(settings, creator)
    engine = create_engine("postgresql+psycopg://", **options)
    if pooler:
        _set_local_timeout(engine, timeout_s)
    return engine
