"""Sessions: an AsyncSession that retries what is safe and maps errors to `neondb.errors`.

Three kinds, all `NeonSession` (see `Database`):

* transactional (`Database.session()` / `transaction()`): BEGIN lazily, COMMIT on success,
  ROLLBACK on an exception;
* autocommit (`Database.autocommit()`): every statement is its own transaction, one round
  trip each; for routes that do their work in one statement;
* read-only (`Database.read_session()`): autocommit, sent to the read replica when one is
  configured.

Retry rule: a read is retried after a lost connection when it is the first statement of its
session (nothing earlier can be lost with it); a write never is.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from typing import Any

from sqlalchemy import Select, event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio.result import _ensure_sync_result
from sqlalchemy.orm import Session, UOWTransaction
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.visitors import iterate
from sqlalchemy.util import EMPTY_DICT, greenlet_spawn

from neondb.errors import DatabaseUnavailableError, classify, is_transient
from neondb.resilience import retrying

__all__ = ["NeonSession", "is_read_statement"]

log = logging.getLogger("neondb")


def _reads_only(statement: Any) -> bool:
    if isinstance(statement, Select):
        # A SELECT over a data-modifying CTE (WITH u AS (UPDATE ...) SELECT ...) writes.
        return statement._for_update_arg is None and not any(
            isinstance(e, UpdateBase) for e in iterate(statement)
        )
    if isinstance(statement, TextClause):
        # Text is opaque: only a plain SELECT/SHOW/VALUES counts (a `WITH` may hide a write).
        head = statement.text.lstrip().split(None, 1)[:1]
        return bool(head) and head[0].upper() in ("SELECT", "SHOW", "VALUES")
    return False


# Walking a statement's tree costs more than running a cached one, so the answer is kept
# per statement shape: by object for statements an app keeps (module-level constants), by
# SQLAlchemy's cache key (the structure without the values, which execute() computes and
# memoizes anyway) for those built per call, by string for text. Bounded: an app that
# builds endlessly many shapes starts over rather than grow.
MAX_SHAPES = 4096
_by_statement: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_by_shape: dict[Any, bool] = {}


def _remember(cache: dict[Any, bool], key: Any, value: bool) -> bool:
    if len(cache) >= MAX_SHAPES:
        cache.clear()
    cache[key] = value
    return value


def is_read_statement(statement: Any) -> bool:
    """A plain SELECT: safe to repeat. Decided once per statement shape."""
    if isinstance(statement, TextClause):
        known = _by_shape.get(statement.text)
        if known is None:
            known = _remember(_by_shape, statement.text, _reads_only(statement))
        return known
    if not isinstance(statement, Select):
        return False
    known = _by_statement.get(statement)
    if known is not None:
        return known
    cache_key = statement._generate_cache_key()
    if cache_key is None:  # an element SQLAlchemy cannot cache: decide every time
        return _reads_only(statement)
    shape = ("select", cache_key.key)
    known = _by_shape.get(shape)
    if known is None:
        known = _remember(_by_shape, shape, _reads_only(statement))
    if len(_by_statement) < MAX_SHAPES:
        _by_statement[statement] = known
    return known


class NeonSyncSession(Session):
    """The synchronous half of a `NeonSession`: counts ORM flushes in `info`, so that an
    autocommit session that fails after a flush can say its earlier writes stay."""


@event.listens_for(NeonSyncSession, "after_flush")
def _count_flush(session: Session, flush_context: UOWTransaction) -> None:
    session.info["neondb.flushes"] = session.info.get("neondb.flushes", 0) + 1


class _CheckoutFailed(Exception):
    """Raised on the sync side: the connection could not be checked out (nothing was sent)."""

    def __init__(self, error: DatabaseUnavailableError) -> None:
        super().__init__(str(error))
        self.error = error


def _execute_core(
    session: Session,
    meter: Any,
    timer: asyncio.Timeout,
    backstop: float | None,
    started: list[float],
    statement: Any,
    params: Any,
    execution_options: Any,
) -> Any:
    # `NeonSession._checkout` and what Session.execute does for a Core statement, minus the
    # ORM's dispatching, in one trip to the sync side. `meter` is None when the session
    # holds its connection already (nothing to wait for).
    if meter is not None:
        meter.waiting += 1
        t0 = time.perf_counter()
        try:
            session.connection(bind_arguments={"clause": statement})
        except DatabaseUnavailableError as e:
            raise _CheckoutFailed(e) from None
        finally:
            meter.waiting -= 1
            meter.waited(time.perf_counter() - t0)
    session._autoflush()
    conn = session.connection(bind_arguments={"clause": statement})
    if backstop is not None:
        timer.reschedule(asyncio.get_running_loop().time() + backstop)
    started.append(time.perf_counter())
    return conn.execute(statement, params, execution_options=execution_options)


class _NoMeter:
    """A pool meter that records nothing, for a database without one."""

    waiting = 0

    def waited(self, seconds: float) -> None:
        pass


_NO_METER: Any = _NoMeter()


class NeonSession(AsyncSession):
    """AsyncSession with safe retries, a client-side statement backstop and mapped errors.

    `info` keys set by `Database`: `neondb.read_only`, `neondb.autocommit`,
    `neondb.retry` (attempts, backoff_s), `neondb.backstop_s`, `neondb.observe` (statement
    time), `neondb.slow_s`, `neondb.pool` (a `metrics.PoolMeter`: the wait for a
    connection), `neondb.fallback` (a replica's: rebinds to the primary when the replica
    gives no connection). Set here: `neondb.wrote` (a statement that is not a read ran).
    """

    sync_session_class = NeonSyncSession

    async def execute(
        self,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Any = EMPTY_DICT,
        **kw: Any,
    ) -> Any:
        if not kw and self._runs_core(statement):
            return await self._guarded(None, statement, params, execution_options)
        return await self._guarded(
            super().execute, statement, params, execution_options=execution_options, **kw
        )

    def _runs_core(self, statement: Any) -> bool:
        """A Core statement (Table columns, text) in a session where nothing ORM-specific
        applies: run on the session's connection, without the ORM's execution machinery,
        to the same effect (autoflush first, the session's bind, its transaction)."""
        sync = self.sync_session
        return (
            isinstance(statement, Executable)
            and statement._propagate_attrs.get("compile_state_plugin") != "orm"
            and not sync.execution_options
            and not sync.dispatch.do_orm_execute
        )

    async def scalar(self, statement: Any, *args: Any, **kw: Any) -> Any:
        return await self._guarded(super().scalar, statement, *args, **kw)

    async def scalars(self, statement: Any, *args: Any, **kw: Any) -> Any:
        return await self._guarded(super().scalars, statement, *args, **kw)

    async def exec(self, statement: Any, *args: Any, **kw: Any) -> Any:
        """SQLModel's `session.exec()`, so code written for SQLModel's AsyncSession runs
        unchanged: the rows' scalars for `sqlmodel.select(Model)`, else the result."""
        result = await self.execute(statement, *args, **kw)
        # Only a statement made by sqlmodel can be one, so its module is loaded by then.
        expression = sys.modules.get("sqlmodel.sql.expression")
        scalar_select = getattr(expression, "SelectOfScalar", None)
        if scalar_select is not None and isinstance(statement, scalar_select):
            return result.scalars()
        return result

    async def commit(self) -> None:
        try:
            await super().commit()
        except Exception as e:
            mapped = classify(e, writing=True)
            if mapped is None or mapped is e:
                raise
            raise mapped from e

    async def _once(self, fn: Any, statement: Any, *args: Any, **kw: Any) -> Any:
        if fn is None:  # a Core statement: see `_runs_core`
            return await self._once_core(statement, *args)
        backstop = self.info.get("neondb.backstop_s")
        # Check out (or open) the connection before the backstop and the statement timer
        # start: they bound and time the statement; opening a connection has its own limits
        # (connect timeout, retries, breaker), and a database that cannot be reached is a
        # 503, not a statement timeout. The pool wait is measured apart.
        await self._checkout()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(backstop):
                return await fn(statement, *args, **kw)
        except TimeoutError:
            # The server never answered within its own timeout plus a margin: the
            # connection's state is unknown, so it must not go back to the pool.
            await self.invalidate()
            raise
        finally:
            self._observe(time.perf_counter() - started, statement)

    def _observe(self, elapsed: float, statement: Any) -> None:
        observe = self.info.get("neondb.observe")
        if observe is not None:
            observe(elapsed)
        if elapsed > self.info.get("neondb.slow_s", float("inf")):
            # The statement's text only: parameters may hold personal data.
            log.warning("slow statement (%.0f ms): %.200s", elapsed * 1000, statement)

    async def _checkout(self) -> None:
        """The session's connection: held already (nothing to wait for), or checked out of
        the pool, timed as the pool wait. A replica that cannot give one (down, refusing,
        its circuit open; nothing was sent) hands the session to the primary."""
        if self.in_transaction():
            await self.connection()
            return
        meter = self.info.get("neondb.pool")
        started = time.perf_counter()
        if meter is not None:
            meter.waiting += 1
        try:
            await self.connection()
        except DatabaseUnavailableError as e:
            fall_back = self.info.get("neondb.fallback")
            if fall_back is None:
                raise
            await fall_back(self, e)
        else:
            return
        finally:
            if meter is not None:
                meter.waiting -= 1
                meter.waited(time.perf_counter() - started)
        await self._checkout()  # on the primary now

    async def _once_core(self, statement: Any, params: Any, execution_options: Any) -> Any:
        """`_once` for a Core statement: checkout (as `_checkout`: the pool wait timed, the
        replica's fallback) and statement in one trip to the sync side; the backstop is
        armed and the statement timed once the connection is checked out."""
        backstop = self.info.get("neondb.backstop_s")
        while True:
            meter = None
            if not self.in_transaction():
                # A meter that counts nothing still makes the wait a checkout.
                meter = self.info.get("neondb.pool") or _NO_METER
            started: list[float] = []
            try:
                async with asyncio.timeout(None) as timer:
                    result = await greenlet_spawn(
                        _execute_core,
                        self.sync_session,
                        meter,
                        timer,
                        backstop,
                        started,
                        statement,
                        params,
                        execution_options,
                    )
            except _CheckoutFailed as failed:
                fall_back = self.info.get("neondb.fallback")
                if fall_back is None:
                    raise failed.error from failed.error.__cause__
                await fall_back(self, failed.error)
                continue  # on the primary now
            except TimeoutError:
                # The backstop fired: the server never answered within its own timeout plus
                # a margin, so the connection's state is unknown and must not be pooled.
                if timer.expired():
                    await self.invalidate()
                raise
            finally:
                if started:
                    self._observe(time.perf_counter() - started[0], statement)
            return await _ensure_sync_result(result, self.execute)

    async def _guarded(self, fn: Any, statement: Any, *args: Any, **kw: Any) -> Any:
        # A read session vouches for its text statements; expressions are checked anyway.
        read = is_read_statement(statement) or (
            self.info.get("neondb.read_only", False) and isinstance(statement, TextClause)
        )
        autocommit = self.info.get("neondb.autocommit", False)
        # Retrying is safe when nothing before this statement could be lost with the
        # connection: the first statement of a transaction, or any in autocommit mode.
        safe = read and (autocommit or not self.in_transaction())
        if not read:
            self.info["neondb.wrote"] = True  # read-your-writes: see `neondb.replicas`
        attempts, backoff_s = self.info.get("neondb.retry", (1, 0.0))
        try:
            if not safe or attempts <= 1:
                return await self._once(fn, statement, *args, **kw)
            # The first attempt runs outside tenacity: setting up its loop costs more than
            # running a cached statement, and only a failure needs it.
            failed: Exception | None = None
            try:
                return await self._once(fn, statement, *args, **kw)
            except Exception as e:
                if not is_transient(e):
                    raise
                await self.invalidate()  # see below
                failed = e
            async for attempt in retrying(attempts, backoff_s):
                with attempt:
                    if failed is not None:
                        # Handed to tenacity as its first attempt's outcome: the same retry
                        # rule, waits and number of attempts as if it had run it.
                        error, failed = failed, None
                        raise error
                    try:
                        return await self._once(fn, statement, *args, **kw)
                    except Exception as e:
                        if is_transient(e):
                            # Drop the dead connection (no round trip) so the retry checks
                            # out a fresh one: invalidate, as the driver may not have flagged
                            # it as a disconnect, and a rollback would pool it again.
                            await self.invalidate()
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except Exception as e:
            # In a transaction a lost connection rolls the whole transaction back on the
            # server: the outcome is known (nothing happened) until COMMIT is sent.
            mapped = classify(e, writing=autocommit and not read)
            if mapped is None or mapped is e:
                raise
            raise mapped from e
