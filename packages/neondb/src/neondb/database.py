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

from sqlalchemy import Engine, event
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
from neondb.replicas import RecentWriters, current_read_context
from neondb.resilience import CircuitBreaker
from neondb.session import NeonSession
from neondb.settings import DatabaseSettings, Driver
from neondb.target import Target, choose_driver, direct_url, is_behind_pooler, parse_setting
from neondb.url import DatabaseURL, parse_url

__all__ = ["Database"]

log = logging.getLogger("neondb")
SessionKind = Literal["transaction", "autocommit", "read"]
Role = Literal["primary", "replica"]
# Why a physical connection was opened (neondb_connections_opened_total{reason}).
CONNECT_REASONS = ("warmup", "demand", "replacement", "recycle", "serverless", "probe")
# Why a read meant for the replica went to the primary (neondb_reads_on_primary_total).
PRIMARY_READ_REASONS = ("replica_down", "circuit_open", "wrote", "asked")
# A replica fallback is logged at most this often (with a count), not once per request.
FALLBACK_LOG_INTERVAL_S = 10.0
# A host name that does not resolve is most likely a typo: retried this long, not the whole
# start-up wait (DNS can fail briefly, so not zero).
UNRESOLVED_HOST_WAIT_S = 3.0


class Database:
    """The database layer of one application. Nothing connects until `start()`."""

    def __init__(self, settings: DatabaseSettings | None = None, *, name: str = "neondb") -> None:
        self.settings = settings or DatabaseSettings()
        self.name = name
        # One breaker per engine: a replica that fails never refuses work on the primary.
        self.breaker = self._new_breaker("primary")
        self.read_breaker = self._new_breaker("replica")
        slow_s = self.settings.db_slow_query_ms / 1000
        self.pool_meters: dict[Role, metrics.PoolMeter] = {
            role: metrics.PoolMeter(name, role, slow_s) for role in ("primary", "replica")
        }
        self.recent_writers = RecentWriters(self.settings.db_read_your_writes_s)
        self._primary_reads = {
            r: metrics.READS_ON_PRIMARY.labels(name, r) for r in PRIMARY_READ_REASONS
        }
        self._fallbacks_since_log = 0
        self._fallback_logged_at = -FALLBACK_LOG_INTERVAL_S
        self._warming = False
        self._probes: dict[Role, AsyncEngine] = {}
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
    def started(self) -> bool:
        return self._engine is not None

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

    def _new_breaker(self, role: Role) -> CircuitBreaker:
        def changed(state: str) -> None:
            self._breaker_changed(role, state)

        s = self.settings
        return CircuitBreaker(s.db_breaker_failures, s.db_breaker_reset_s, on_change=changed)

    def breakers(self) -> dict[Role, CircuitBreaker]:
        """The breaker of each engine in use (the replica's only when one is configured)."""
        if self.settings.database_read_url is None:
            return {"primary": self.breaker}
        return {"primary": self.breaker, "replica": self.read_breaker}

    def _breaker_changed(self, role: Role, state: str) -> None:
        breaker = self.breaker if role == "primary" else self.read_breaker
        if state == "open":
            then = "reads go to the primary" if role == "replica" else "failing fast"
            log.warning(
                "database %s (%s): circuit open after %d connection failures in a row; %s "
                "for %.0f s",
                self.name,
                role,
                breaker.consecutive_failures,
                then,
                self.settings.db_breaker_reset_s,
            )
        else:
            log.info("database %s (%s): circuit %s", self.name, role, state)

    def _instrument(self, engine: AsyncEngine, role: Role, *, reason: str | None = None) -> None:
        """Count each physical connection the engine opens, by why it was opened."""
        counters = {r: metrics.CONNECTS.labels(self.name, role, r) for r in CONNECT_REASONS}
        serverless = self.settings.db_serverless

        @event.listens_for(engine.sync_engine, "connect")
        def _opened(dbapi_conn: Any, record: Any) -> None:
            self.connections_opened += 1
            seen = record.record_info  # one pool slot's, kept across its reconnections
            if reason is not None:
                why = reason
            elif serverless:
                why = "serverless"
            elif self._warming:
                why = "warmup"
            elif "neondb.opened" not in seen:
                why = "demand"
            elif seen.pop("neondb.dead", False):
                why = "replacement"
            else:
                why = "recycle"  # the slot reconnected with no invalidation: its age
            seen["neondb.opened"] = True
            counters[why].inc()

        @event.listens_for(engine.sync_engine, "invalidate")
        def _dead(dbapi_conn: Any, record: Any, exception: Any) -> None:
            record.record_info["neondb.dead"] = True

    def _build(self, url: DatabaseURL, role: Role) -> AsyncEngine:
        engine = build_engine(
            url,
            self.driver,
            self.settings,
            pooler=self.behind_pooler(url),
            breaker=self.breaker if role == "primary" else self.read_breaker,
        )
        self._instrument(engine, role)
        return engine

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
        self._engine = self._build(self.url, "primary")
        if self.read_url is not None:
            self._read_engine = self._build(self.read_url, "replica")
        self._makers = {
            "transaction": self._maker(self.engine, "transaction"),
            "autocommit": self._maker(self.engine, "autocommit"),
            "read": self._maker(self.engine, "read"),
        }
        if self._read_engine is not None:
            self._replica_maker = self._maker(self._read_engine, "read", role="replica")
            self._primary_read_bind = self.engine.execution_options(isolation_level="AUTOCOMMIT")
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
            # Start-up has its own patience; do not fail fast yet.
            self.breaker.reset()
            self.read_breaker.reset()
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
        self._warming = True
        try:
            await self._warm_engines()
        finally:
            self._warming = False

    async def _warm_engines(self) -> None:
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
            try:
                async with self._read_engine.connect() as c:
                    await c.exec_driver_sql("SELECT 1")
            except Exception as e:
                # A replica that is down (not misconfigured: a refused login or a missing
                # database stop start-up) is no reason not to serve: the primary can
                # serve reads too, until the replica is back.
                if not (is_transient(e) or is_timeout(e)):
                    raise
                log.warning(
                    "database %s: the replica (DATABASE_READ_URL) is not reachable at "
                    "start-up, reads go to the primary until it is: %s",
                    self.name,
                    classify(e) or type(e).__name__,
                )

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
        for engine in (self._read_engine, self._engine, *self._probes.values()):
            if engine is not None:
                await engine.dispose()
        self._probes = {}
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

    def _maker(
        self, engine: AsyncEngine, kind: SessionKind, *, role: Role = "primary"
    ) -> async_sessionmaker[NeonSession]:
        s = self.settings
        bind = engine
        if kind != "transaction":
            bind = engine.execution_options(isolation_level="AUTOCOMMIT")
        observe = metrics.STATEMENT_SECONDS.labels(self.name, kind).observe
        info: dict[str, Any] = {
            "neondb.read_only": kind == "read",
            "neondb.autocommit": kind != "transaction",
            "neondb.retry": (s.db_retry_attempts, s.db_retry_backoff_s),
            "neondb.backstop_s": s.statement_backstop_s,
            "neondb.observe": observe,
            "neondb.slow_s": s.db_slow_query_ms / 1000,
            "neondb.pool": self.pool_meters[role],
        }
        if role == "replica":
            info["neondb.fallback"] = self._fall_back
        return async_sessionmaker(bind, class_=NeonSession, expire_on_commit=False, info=info)

    def _count_primary_read(self, reason: str) -> None:
        self._primary_reads[reason].inc()
        if reason not in ("replica_down", "circuit_open"):
            return
        self._fallbacks_since_log += 1
        now = time.monotonic()
        if now - self._fallback_logged_at >= FALLBACK_LOG_INTERVAL_S:
            log.warning(
                "database %s: the replica is %s; %d read(s) served by the primary since the "
                "last message",
                self.name,
                "down" if reason == "replica_down" else "behind an open circuit",
                self._fallbacks_since_log,
            )
            self._fallback_logged_at = now
            self._fallbacks_since_log = 0

    async def _fall_back(self, session: NeonSession, error: Exception) -> None:
        """The replica could not give `session` a connection (nothing was sent): rebind it
        to the primary, within the same request."""
        await _quiet_rollback(session)
        session.bind = self._primary_read_bind
        session.info["neondb.pool"] = self.pool_meters["primary"]
        del session.info["neondb.fallback"]
        self._count_primary_read("replica_down")
        log.debug("replica read falls back to the primary: %s", error)

    def _read_route(self, primary: bool) -> tuple[async_sessionmaker[NeonSession], Role]:
        """Which engine serves a read session: the replica, unless the read must see this
        client's writes (see `neondb.replicas`) or the replica's circuit is open."""
        if self._read_engine is None:
            return self._makers["read"], "primary"
        ctx = current_read_context()
        reason = None
        if primary or (ctx is not None and ctx.primary):
            reason = "asked"
        elif ctx is not None and (
            ctx.wrote or (ctx.client is not None and self.recent_writers.pinned(ctx.client))
        ):
            reason = "wrote"
        elif self.read_breaker.state == "open":
            reason = "circuit_open"
        if reason is None:
            return self._replica_maker, "replica"
        self._count_primary_read(reason)
        return self._makers["read"], "primary"

    def _note_write(self) -> None:
        ctx = current_read_context()
        if ctx is not None:
            ctx.wrote = True
            if ctx.client is not None:
                self.recent_writers.wrote(ctx.client)

    @asynccontextmanager
    async def _session(
        self, kind: SessionKind, *, primary: bool = False
    ) -> AsyncIterator[NeonSession]:
        if not self._makers:
            raise RuntimeError(f"{self!r} is not started: call `await db.start()` first")
        if kind == "read":
            maker, role = self._read_route(primary)
        else:
            maker, role = self._makers[kind], "primary"
        # Fail fast while the circuit is open, before waiting on the pool (an open replica
        # circuit never gets here: its reads went to the primary).
        if role == "primary" and self.breaker.state == "open":
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
            finally:
                # Read-your-writes: this client's next reads go to the primary for a while
                # (even when the outcome is unknown: the write may have committed).
                if (
                    self._read_engine is not None
                    and kind != "read"
                    and (session.info.get("neondb.wrote") or session.info.get("neondb.flushes"))
                ):
                    self._note_write()

    def session(self) -> Any:
        """A transactional session: BEGIN on first use, COMMIT on success, ROLLBACK on an
        exception. Use it when several statements must succeed or fail together."""
        return self._session("transaction")

    transaction = session

    def autocommit(self) -> Any:
        """Each statement commits on its own: one round trip for a single-statement read
        or write (INSERT ... RETURNING, UPDATE ... RETURNING, a CTE)."""
        return self._session("autocommit")

    def read_session(self, *, primary: bool = False) -> Any:
        """Reads only; served by DATABASE_READ_URL when set (unless `primary`, or the reads
        must see this client's recent writes, or the replica is down: then the primary);
        retried on a lost connection."""
        return self._session("read", primary=primary)

    # observation -------------------------------------------------------------------------

    def _engine_of(self, role: Role) -> AsyncEngine | None:
        return self._engine if role == "primary" else self._read_engine

    def pool_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role in ("primary", "replica"):
            engine = self._engine_of(role)
            if engine is None:
                continue
            p: Any = engine.pool
            waiting = self.pool_meters[role].waiting
            if self.settings.db_serverless:
                out[role] = {
                    "mode": "serverless",
                    "size": 0,
                    "checked_out": 0,
                    "checked_in": 0,
                    "waiting": waiting,
                }
                continue
            out[role] = {
                "mode": "pool",
                "size": p.checkedin() + p.checkedout(),
                "checked_out": p.checkedout(),
                "checked_in": p.checkedin(),
                "waiting": waiting,
                "max": self.settings.db_pool_max,
                "timeout_s": self.settings.db_pool_timeout_s,
            }
        return out

    def pool_busy(self, role: Role = "primary") -> bool:
        """Every pooled connection is checked out, or someone is waiting for one: a check
        through the pool would queue behind the load."""
        engine = self._engine_of(role)
        if engine is None or self.settings.db_serverless:
            return False
        p: Any = engine.pool
        return bool(
            p.checkedout() >= self.settings.db_pool_max or self.pool_meters[role].waiting > 0
        )

    async def ping(self, timeout_s: float = 5.0, *, role: Role = "primary") -> float:
        """Round-trip one `SELECT 1` through the pool; return the latency in ms."""
        engine = self._engine_of(role) or self.engine
        started = time.perf_counter()
        async with asyncio.timeout(timeout_s), engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        return (time.perf_counter() - started) * 1000

    async def probe(self, timeout_s: float = 5.0, *, role: Role = "primary") -> float:
        """`SELECT 1` on a connection of its own, outside the pool (opened and closed, so it
        never queues behind a busy pool); return the latency in ms, the connect included.
        It goes through the engine's breaker: a database that is down opens it."""
        url = self.url if role == "primary" else self.read_url
        if url is None:
            raise RuntimeError(f"{self!r} has no {role} engine")
        engine = self._probes.get(role)
        if engine is None:
            settings = self.settings.model_copy(
                update={"db_serverless": True, "db_retry_attempts": 1}
            )
            breaker = self.breaker if role == "primary" else self.read_breaker
            pooler = self.behind_pooler(url)
            engine = build_engine(url, self.driver, settings, pooler=pooler, breaker=breaker)
            self._instrument(engine, role, reason="probe")
            self._probes[role] = engine
        started = time.perf_counter()
        async with asyncio.timeout(timeout_s), engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        return (time.perf_counter() - started) * 1000


async def _quiet_rollback(session: NeonSession) -> None:
    try:
        await session.rollback()
    except Exception:  # the connection is gone; the pool drops it
        log.debug("rollback after an error failed", exc_info=True)
