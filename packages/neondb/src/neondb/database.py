"""`Database`: owns the engines (primary, optional replica), their start and stop, and
hands out sessions.

    db = Database(DatabaseSettings())
    await db.start()                       # embedded server if DATABASE_URL is unset
    async with db.session() as s: ...      # transaction: commit on success, else rollback
    async with db.autocommit() as s: ...   # one statement, one round trip
    async with db.read_session() as s: ... # reads, replica if configured, retried safely
    await db.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from neondb import metrics
from neondb.embedded import EmbeddedServer
from neondb.engine import build_engine, build_sync_engine
from neondb.errors import (
    DatabaseUnavailableError,
    classify,
    is_timeout,
    is_transient,
    is_unresolvable,
)
from neondb.resilience import CircuitBreaker
from neondb.session import NeonSession
from neondb.settings import DatabaseSettings, Driver
from neondb.target import Target, choose_driver, direct_url, is_behind_pooler, parse_setting
from neondb.url import DatabaseURL, parse_url

__all__ = ["Database"]

log = logging.getLogger("neondb")
SessionKind = Literal["transaction", "autocommit", "read"]
# A host name that does not resolve is most likely a typo: retried this long, not the whole
# start-up wait (DNS can fail briefly, so not zero).
UNRESOLVED_HOST_WAIT_S = 3.0


class Database:
    """The database layer of one application. Nothing connects until `start()`."""

    def __init__(self, settings: DatabaseSettings | None = None, *, name: str = "neondb") -> None:
        self.settings = settings or DatabaseSettings()
        self.name = name
        self.breaker = CircuitBreaker(
            self.settings.db_breaker_failures,
            self.settings.db_breaker_reset_s,
            on_change=self._breaker_changed,
        )
        self.embedded: EmbeddedServer | None = None
        self.url: DatabaseURL | None = None
        self.read_url: DatabaseURL | None = None
        self._engine: AsyncEngine | None = None
        self._read_engine: AsyncEngine | None = None
        self._sync_engine: Engine | None = None
        self._makers: dict[SessionKind, async_sessionmaker[NeonSession]] = {}
        self.connections_opened = 0

    def __repr__(self) -> str:
        where = self.url.display if self.url else "not started"
        return f"Database({self.name!r}, {where})"

    # configuration -----------------------------------------------------------------------

    @property
    def driver(self) -> Driver:
        """The driver in use (see `neondb.target.choose_driver`)."""
        pooler = self.behind_pooler()
        return choose_driver(self.settings, self.url, pooler=pooler)[0]

    def describe(self) -> str:
        """One line naming the database this layer will use, without connecting (the
        embedded server and its data folder, or the masked URL), the driver, and whether a
        pooler or serverless mode is on. Raises ConfigurationError for a bad URL."""
        return Target.from_settings(self.settings, self.url).describe()

    def behind_pooler(self, url: DatabaseURL | None = None) -> bool:
        return is_behind_pooler(self.settings, url or self.url)[0]

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError(f"{self!r} is not started: call `await db.start()` first")
        return self._engine

    @property
    def read_engine(self) -> AsyncEngine:
        return self._read_engine or self.engine

    # lifecycle ---------------------------------------------------------------------------

    def _resolve_url(self) -> DatabaseURL:
        raw = self.settings.database_url
        if raw is None:
            if self.embedded is None:  # sync_engine() may have started it already
                self.embedded = EmbeddedServer(self.settings.db_data_dir)
            return parse_url(self.embedded.start())
        return parse_setting("DATABASE_URL", raw.get_secret_value())

    def _breaker_changed(self, state: str) -> None:
        if state == "open":
            log.warning(
                "database %s: circuit open after %d connection failures in a row; failing fast "
                "for %.0f s",
                self.name,
                self.breaker.consecutive_failures,
                self.settings.db_breaker_reset_s,
            )
        else:
            log.info("database %s: circuit %s", self.name, state)

    def _count_connect(self) -> None:
        self.connections_opened += 1
        metrics.CONNECTS.labels(self.name).inc()

    def _build(self, url: DatabaseURL) -> AsyncEngine:
        return build_engine(
            url,
            self.driver,
            self.settings,
            pooler=self.behind_pooler(url),
            breaker=self.breaker,
            on_connect=self._count_connect,
        )

    async def start(self, *, wait_s: float | None = None) -> None:
        """Build the engines, then wait (with backoff, up to `wait_s`, default
        DB_STARTUP_TIMEOUT_S) until the database answers, since a Neon compute may be waking
        from zero. Opens DB_POOL_MIN connections so the first requests find them warm."""
        if self._engine is not None:
            return
        try:
            await self._start(wait_s)
        except BaseException:
            await self.stop()  # never half-started: no engine, no embedded server left
            raise

    async def _start(self, wait_s: float | None) -> None:
        if self.settings.database_read_url is not None:
            raw = self.settings.database_read_url.get_secret_value()
            self.read_url = parse_setting("DATABASE_READ_URL", raw)
        self.url = self._resolve_url()
        self._engine = self._build(self.url)
        if self.read_url is not None:
            self._read_engine = self._build(self.read_url)
        self._makers = {
            "transaction": self._maker(self.engine, "transaction"),
            "autocommit": self._maker(self.engine, "autocommit"),
            "read": self._maker(self.read_engine, "read"),
        }
        metrics.register_database(self)
        log.info("database %s: %s", self.name, self.describe())
        wait = self.settings.db_startup_timeout_s if wait_s is None else wait_s
        await self._wait_until_ready(wait)

    def _target(self) -> str:
        """Where the database is, for messages: the variable and its masked value."""
        if self.settings.database_url is None:
            data = self.embedded.pgdata if self.embedded else self.settings.db_data_dir
            return f"the embedded server (data in {data})"
        return f"DATABASE_URL={self.url.display if self.url else '(unparsed)'}"

    async def _wait_until_ready(self, wait_s: float) -> None:
        """Warm the pool, retrying with backoff while the database is unreachable: one log
        line per failed attempt with the time spent and left; a host name that does not
        resolve (most likely a typo) gets a short retry, not the whole wait."""
        started = time.monotonic()
        deadline = started + wait_s
        backoff = max(self.settings.db_retry_backoff_s, 0.05)
        attempt = 0
        while True:
            attempt += 1
            self.breaker.reset()  # start-up has its own patience; do not fail fast yet
            try:
                await self._warm()
                if attempt > 1:
                    log.info(
                        "database ready after %d attempts (%.1f s)",
                        attempt,
                        time.monotonic() - started,
                    )
                return
            except Exception as e:
                mapped = classify(e)
                if not isinstance(mapped, DatabaseUnavailableError) or not (
                    is_transient(e) or is_timeout(e)
                ):
                    raise  # a refused login or a bad certificate will not heal by waiting
                now = time.monotonic()
                if is_unresolvable(e):
                    deadline = min(deadline, started + UNRESOLVED_HOST_WAIT_S)
                left = deadline - now
                if left <= 0:
                    limit = (
                        f"the host name does not resolve (check the host in {self._target()})"
                        if is_unresolvable(e)
                        else f"{self._target()} not reachable within "
                        f"DB_STARTUP_TIMEOUT_S={wait_s:g} s"
                    )
                    raise DatabaseUnavailableError(
                        f"database start-up failed after {attempt} attempts "
                        f"({now - started:.1f} s): {limit}; last error: {mapped}",
                        orig=e,
                    ) from e
                log.warning(
                    "database not ready, attempt %d (%.1f s spent, %.1f s left): %s",
                    attempt,
                    now - started,
                    left,
                    mapped,
                )
                await asyncio.sleep(min(backoff, left))
                backoff = min(backoff * 2, 2.0)

    async def _warm(self) -> None:
        warm = 1 if self.settings.db_serverless else max(1, self.settings.db_pool_min)
        conns = []
        try:
            for _ in range(warm):  # one by one, so a failure part-way closes those opened
                conns.append(await self.engine.connect())
            await conns[0].exec_driver_sql("SELECT 1")
            if self.behind_pooler():
                await self.ensure_role_timeout(conns[0])
        finally:
            for c in conns:
                await c.close()
        if self._read_engine is not None:
            async with self._read_engine.connect() as c:
                await c.exec_driver_sql("SELECT 1")

    async def ensure_role_timeout(self, conn: Any) -> None:
        """Behind a transaction pooler, session settings do not stick, so single statements
        rely on the role's default statement_timeout in this database. Set it when it
        differs (an ordinary role may set its own defaults; `IN DATABASE` keeps it to this
        database); the server connection used here gets it at once, the pooler's others as
        it opens new ones."""
        want = round(self.settings.db_statement_timeout_s * 1000)
        if not want:
            return
        # `reset_val`, not `setting`: `conn` is already in a transaction that began with
        # SET LOCAL statement_timeout, which `setting` would report.
        have, db_name = (
            await conn.exec_driver_sql(
                "SELECT reset_val::int, quote_ident(current_database()) "
                "FROM pg_settings WHERE name = 'statement_timeout'"
            )
        ).one()
        if have == want:
            return
        try:
            # One statement per call (asyncpg prepares each, and cannot prepare a list),
            # committed together in the transaction `conn` is already in.
            await conn.exec_driver_sql(
                f"ALTER ROLE CURRENT_USER IN DATABASE {db_name} SET statement_timeout = {want}"
            )
            # The same value as the new default, on the one server connection that would
            # otherwise keep the old one until the pooler replaces it.
            await conn.exec_driver_sql(f"SET statement_timeout = {want}")
            await conn.commit()
            log.info("behind a pooler: set this role's statement_timeout default to %d ms", want)
        except Exception as e:
            await conn.rollback()
            log.warning(
                "behind a pooler, DB_STATEMENT_TIMEOUT_S covers explicit transactions only: "
                "could not set the role default (%s). Run `neondb role-timeout` as an owner.",
                type(e).__name__,
            )

    @asynccontextmanager
    async def schema_engine(self) -> AsyncIterator[AsyncEngine]:
        """The engine for schema changes (migrations): behind a transaction pooler, a
        short-lived one on the direct endpoint (DATABASE_DIRECT_URL, or the URL without
        `-pooler`), as Neon advises; otherwise the app's own."""
        direct = direct_url(self.settings, self.url) if self.behind_pooler() else None
        if direct is None:
            if self.behind_pooler():
                log.warning(
                    "migrations go through the transaction pooler: set DATABASE_DIRECT_URL "
                    "to run them on the direct endpoint"
                )
            yield self.engine
            return
        settings = self.settings.model_copy(update={"db_serverless": True})  # no pool kept
        breaker = CircuitBreaker(settings.db_breaker_failures, settings.db_breaker_reset_s)
        engine = build_engine(direct, self.driver, settings, pooler=False, breaker=breaker)
        log.info("schema changes on the direct endpoint %s", direct.display)
        try:
            yield engine
        finally:
            await engine.dispose()

    def sync_engine(self) -> Engine:
        """A synchronous engine (psycopg 3) on the same database and settings, for scripts
        and sync code. Made on first use (starting the embedded server if need be);
        `stop()` disposes of it."""
        if self._sync_engine is None:
            if self.url is None:
                self.url = self._resolve_url()
            self._sync_engine = build_sync_engine(
                self.url, self.settings, pooler=self.behind_pooler()
            )
        return self._sync_engine

    async def stop(self) -> None:
        """Close every pooled connection; release the embedded server."""
        for engine in (self._read_engine, self._engine):
            if engine is not None:
                await engine.dispose()
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        self._engine = self._read_engine = self._sync_engine = None
        self._makers = {}
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # sessions ----------------------------------------------------------------------------

    def _maker(self, engine: AsyncEngine, kind: SessionKind) -> async_sessionmaker[NeonSession]:
        s = self.settings
        bind = engine
        if kind != "transaction":
            bind = engine.execution_options(isolation_level="AUTOCOMMIT")
        observe = metrics.STATEMENT_SECONDS.labels(self.name, kind).observe
        return async_sessionmaker(
            bind,
            class_=NeonSession,
            expire_on_commit=False,
            info={
                "neondb.read_only": kind == "read",
                "neondb.autocommit": kind != "transaction",
                "neondb.retry": (s.db_retry_attempts, s.db_retry_backoff_s),
                "neondb.backstop_s": s.statement_backstop_s,
                "neondb.observe": observe,
                "neondb.slow_s": s.db_slow_query_ms / 1000,
            },
        )

    @asynccontextmanager
    async def _session(self, kind: SessionKind) -> AsyncIterator[NeonSession]:
        maker = self._makers.get(kind)
        if maker is None:
            raise RuntimeError(f"{self!r} is not started: call `await db.start()` first")
        # Fail fast while the circuit is open, before waiting on the pool.
        if self.breaker.state == "open":
            self.breaker.before_call()
        async with maker() as session:
            try:
                yield session
                if kind == "transaction" and session.in_transaction():
                    await session.commit()
                elif kind == "autocommit" and (session.new or session.dirty or session.deleted):
                    # Objects given to `add()` would otherwise be dropped unsaved; each
                    # flushed statement commits. Nothing pending: not even a trip to the
                    # sync side.
                    await session.flush()
            except Exception as e:
                await _quiet_rollback(session)
                flushes = session.info.get("neondb.flushes", 0)
                if kind == "autocommit" and flushes:
                    log.warning(
                        "an autocommit session failed (%s) after %d ORM flush(es) that had "
                        "already committed, each on its own: they are not rolled back. Use a "
                        "transaction (DbSession, db.session()) for add()/flush()/commit() work "
                        "that must succeed or fail together",
                        type(e).__name__,
                        flushes,
                    )
                # Errors from session methods that NeonSession does not wrap (get, flush,
                # refresh, ...) get the same mapping: a 503, not a 500. Before COMMIT a
                # transaction's outcome is known (rolled back); an autocommit write's is not.
                mapped = classify(e, writing=kind == "autocommit")
                if mapped is not None:
                    metrics.ERRORS.labels(self.name, type(mapped).__name__).inc()
                    if mapped is not e:
                        raise mapped from e
                raise
            except BaseException:
                await _quiet_rollback(session)
                raise

    def session(self) -> Any:
        """A transactional session: BEGIN on first use, COMMIT on success, ROLLBACK on an
        exception. Use it when several statements must succeed or fail together."""
        return self._session("transaction")

    transaction = session

    def autocommit(self) -> Any:
        """Each statement commits on its own: one round trip for a single-statement read
        or write (INSERT ... RETURNING, UPDATE ... RETURNING, a CTE)."""
        return self._session("autocommit")

    def read_session(self) -> Any:
        """Reads only; served by DATABASE_READ_URL when set; retried on a lost connection."""
        return self._session("read")

    # observation -------------------------------------------------------------------------

    def pool_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role, engine in (("primary", self._engine), ("replica", self._read_engine)):
            if engine is None:
                continue
            p: Any = engine.pool
            if self.settings.db_serverless:
                out[role] = {"mode": "serverless", "size": 0, "checked_out": 0, "checked_in": 0}
                continue
            out[role] = {
                "mode": "pool",
                "size": p.checkedin() + p.checkedout(),
                "checked_out": p.checkedout(),
                "checked_in": p.checkedin(),
                "max": self.settings.db_pool_max,
                "timeout_s": self.settings.db_pool_timeout_s,
            }
        return out

    async def ping(self, timeout_s: float = 5.0) -> float:
        """Round-trip one `SELECT 1` through the pool; return the latency in ms."""
        started = time.perf_counter()
        async with asyncio.timeout(timeout_s), self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        return (time.perf_counter() - started) * 1000


async def _quiet_rollback(session: NeonSession) -> None:
    try:
        await session.rollback()
    except Exception:  # the connection is gone; the pool drops it
        log.debug("rollback after an error failed", exc_info=True)
