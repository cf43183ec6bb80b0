"""neondb.database: lifecycle (never half-started), pool figures, no connection leak,
waiting for a free connection, serverless mode, the read replica URL, errors of every
session method mapped, and the synchronous engine."""

from __future__ import annotations

import asyncio
import gc
import random
import time
import uuid
import warnings

import pytest
from neondb_support import (
    Item,
    add_slow_commit_trigger,
    connections_of,
    make_settings,
    open_database,
    role_of,
    terminate_during_commit,
    wait_until,
    with_query,
)
from sqlalchemy import Engine, text

from neondb import (
    ConfigurationError,
    Database,
    DatabaseUnavailableError,
    PoolExhaustedError,
    WriteOutcomeUnknownError,
)
from neondb.errors import exception_chain
from neondb.testing import admin_execute
from neondb.url import parse_url


async def test_start_warms_the_pool_and_stop_closes_it(
    neondb_database_url: str, driver: str
) -> None:
    db = Database(make_settings(neondb_database_url, db_driver=driver, db_pool_min=3))
    with pytest.raises(RuntimeError, match="not started"):
        _ = db.engine
    await db.start()
    try:
        await db.start()  # idempotent
        assert db.connections_opened == 3
        stats = db.pool_stats()["primary"]
        assert stats == {
            "mode": "pool",
            "size": 3,
            "checked_out": 0,
            "checked_in": 3,
            "waiting": 0,
            "max": 5,
            "timeout_s": 10.0,
        }
        assert db.driver == driver
        assert await db.ping() > 0
    finally:
        await db.stop()
    assert db.pool_stats() == {}
    await db.stop()  # idempotent too
    with pytest.raises(RuntimeError, match="not started"):
        async with db.read_session():
            pass


async def test_async_with(neondb_database_url: str) -> None:
    async with Database(make_settings(neondb_database_url)) as db, db.read_session() as s:
        assert (await s.execute(text("SELECT 1"))).scalar() == 1
    assert db._engine is None


async def test_no_connection_leak_after_1000_sessions(neondb_schema_url: str, driver: str) -> None:
    async with open_database(
        neondb_schema_url, db_driver=driver, db_pool_min=2, db_pool_max=4
    ) as db:
        async with db.autocommit() as s:
            await s.execute(text("CREATE TABLE leak (n int PRIMARY KEY)"))
        rng = random.Random(7)
        failures = 0
        for n in range(1000):
            kind = ("session", "autocommit", "read_session")[n % 3]
            try:
                async with getattr(db, kind)() as s:
                    if kind == "read_session":
                        await s.execute(text("SELECT count(*) FROM leak"))
                    else:
                        await s.execute(text("INSERT INTO leak VALUES (:n)"), {"n": n})
                    if rng.random() < 0.1:
                        raise RuntimeError("the caller's own failure")
                    if rng.random() < 0.05:
                        await s.execute(text("INSERT INTO leak VALUES (-1)"))  # may collide
            except Exception:
                failures += 1
            if n % 100 == 0:
                assert db.pool_stats()["primary"]["checked_out"] == 0
        stats = db.pool_stats()["primary"]
        assert failures > 0
        assert stats["checked_out"] == 0
        assert stats["size"] <= 4
        assert db.connections_opened <= 4  # no churn: the same connections served them all


async def test_concurrent_sessions_beyond_the_pool_wait_and_succeed(
    neondb_database_url: str, driver: str
) -> None:
    pool_max = 4
    async with open_database(
        neondb_database_url, db_driver=driver, db_pool_min=1, db_pool_max=pool_max
    ) as db:
        peak = 0

        async def one(i: int) -> int:
            nonlocal peak
            async with db.read_session() as s:
                sql = text("SELECT CAST(:i AS int) FROM pg_sleep(0.05)")
                result = (await s.execute(sql, {"i": i})).scalar()
                peak = max(peak, db.pool_stats()["primary"]["checked_out"])
                return int(result)

        async with asyncio.timeout(30), asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i)) for i in range(3 * pool_max)]
        assert [t.result() for t in tasks] == list(range(3 * pool_max))
        assert peak == pool_max
        stats = db.pool_stats()["primary"]
        assert stats["checked_out"] == 0
        assert stats["size"] <= pool_max
        assert db.connections_opened <= pool_max


async def test_serverless_mode_keeps_no_pool(neondb_database_url: str, driver: str) -> None:
    async with open_database(neondb_database_url, db_driver=driver, db_serverless=True) as db:
        assert db.pool_stats()["primary"] == {
            "mode": "serverless",
            "size": 0,
            "checked_out": 0,
            "checked_in": 0,
            "waiting": 0,
        }
        opened = db.connections_opened
        for _ in range(3):
            async with db.read_session() as s:
                assert (await s.execute(text("SELECT 1"))).scalar() == 1
        assert db.connections_opened == opened + 3  # a connection per session, none kept


async def test_read_sessions_go_to_the_read_url(neondb_database_url: str, driver: str) -> None:
    from neondb.url import parse_url

    replica = (
        parse_url(neondb_database_url)
        .url.update_query_dict({"application_name": "neondb-replica"})
        .render_as_string(hide_password=False)
    )
    async with open_database(
        neondb_database_url, db_driver=driver, database_read_url=replica
    ) as db:
        app_name = text("SELECT current_setting('application_name')")
        async with db.read_session() as s:
            assert (await s.execute(app_name)).scalar() == "neondb-replica"
        for kind in ("session", "autocommit"):
            async with getattr(db, kind)() as s:
                assert (await s.execute(app_name)).scalar() != "neondb-replica"
        assert set(db.pool_stats()) == {"primary", "replica"}
        assert db.read_url is not None
        assert "neondb-replica" in repr(db.read_url)


async def test_start_fails_cleanly_when_the_database_does_not_exist(
    neondb_database_url: str, driver: str
) -> None:
    from neondb.url import parse_url

    missing = parse_url(neondb_database_url).with_database("no_such_database_here")
    db = Database(
        make_settings(missing.url.render_as_string(hide_password=False), db_driver=driver)
    )
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="no_such_database_here") as info:
        await db.start()
    assert info.value.transient is False  # not retried until DB_STARTUP_TIMEOUT_S
    assert time.monotonic() - started < 2
    assert db._engine is None  # stopped again


# never half-started ---------------------------------------------------------------------------


async def test_bad_read_url_leaves_nothing_started(neondb_database_url: str) -> None:
    db = Database(make_settings(neondb_database_url, database_read_url="mysql://x"))
    with pytest.raises(ConfigurationError, match="not PostgreSQL"):
        await db.start()
    assert db._engine is None
    assert db._read_engine is None
    assert db._makers == {}
    assert db.embedded is None
    with pytest.raises(RuntimeError, match="not started"):
        async with db.session():
            pass


async def test_unreachable_read_url_closes_the_primary_again(
    neondb_database_url: str, driver: str
) -> None:
    """The primary warms up, then the replica refuses: start() fails and leaves no engine
    and no connection behind."""
    app = f"half-{uuid.uuid4().hex[:8]}"
    primary = with_query(neondb_database_url, application_name=app)
    replica = parse_url(neondb_database_url).with_database("no_such_replica_db")
    db = Database(
        make_settings(
            primary,
            db_driver=driver,
            db_pool_min=2,
            database_read_url=replica.url.render_as_string(hide_password=False),
        )
    )
    with pytest.raises(DatabaseUnavailableError, match="no_such_replica_db") as info:
        await db.start()
    assert info.value.transient is False
    assert db._engine is None
    assert db._read_engine is None
    assert db.pool_stats() == {}
    await wait_until(lambda: connections_of(neondb_database_url, application=app) == 0, timeout_s=5)


async def test_failed_warm_up_leaks_no_connection(
    own_role: str, neondb_database_url: str, driver: str
) -> None:
    """DB_POOL_MIN=3 for a role allowed 2 connections: the third fails (too many
    connections, transient, so start-up keeps trying until DB_STARTUP_TIMEOUT_S). The two
    opened each time are closed again, and the failed start disposes of them."""
    role = role_of(own_role)
    admin_execute(neondb_database_url, f'ALTER ROLE "{role}" CONNECTION LIMIT 2')
    db = Database(
        make_settings(
            own_role,
            db_driver=driver,
            db_pool_min=3,
            db_pool_max=3,
            db_startup_timeout_s=1,
            db_retry_attempts=2,
        )
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as info:
            await db.start()
        elapsed = time.monotonic() - started
        assert db._engine is None
        await wait_until(lambda: connections_of(neondb_database_url, role=role) == 0, timeout_s=5)
        gc.collect()
    assert info.value.transient is True  # too many connections: worth waiting for
    assert any("too many connections" in str(e) for e in exception_chain(info.value))
    assert 0.9 < elapsed < 5  # waited out DB_STARTUP_TIMEOUT_S (1 s), then gave up
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    # With the limit lifted, the same settings start.
    admin_execute(neondb_database_url, f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
    await db.start()
    try:
        assert db.pool_stats()["primary"]["size"] == 3
    finally:
        await db.stop()


# errors of every session method -----------------------------------------------------------------


async def test_pool_exhaustion_in_any_session_method_is_a_503(
    neondb_schema_url: str, driver: str
) -> None:
    """get() and the flush of add() are not NeonSession's wrapped methods: the session
    maps their errors all the same."""
    async with open_database(
        neondb_schema_url, db_driver=driver, db_pool_max=1, db_pool_timeout_s=0.5
    ) as db:
        async with db.engine.begin() as conn:
            await conn.run_sync(Item.metadata.create_all)
        async with db.read_session() as held:
            await held.execute(text("SELECT 1"))  # the only connection, held
            with pytest.raises(PoolExhaustedError):
                async with db.read_session() as s:
                    await s.get(Item, 1)
            for kind in ("autocommit", "session"):
                with pytest.raises(PoolExhaustedError):
                    async with getattr(db, kind)() as s:
                        s.add(Item(id=1, name=kind))  # flushed on exit
        assert db.pool_stats()["primary"]["checked_out"] == 0
        async with db.autocommit() as s:
            s.add(Item(id=1, name="later"))
        async with db.read_session() as s:
            got = await s.get(Item, 1)
            assert got is not None
            assert got.name == "later"


async def test_connection_lost_during_commit_is_write_outcome_unknown(
    neondb_schema_url: str, driver: str
) -> None:
    """The server is terminated while it runs COMMIT: the client cannot know whether the
    write committed. 503, never replayed."""
    admin_execute(neondb_schema_url, "CREATE TABLE ledger (id int PRIMARY KEY)")
    add_slow_commit_trigger(neondb_schema_url, "ledger")
    async with open_database(neondb_schema_url, db_driver=driver, db_pool_max=2) as db:

        async def write() -> None:
            async with db.session() as s:
                await s.execute(text("INSERT INTO ledger VALUES (1)"))

        killer = asyncio.create_task(terminate_during_commit(neondb_schema_url))
        started = time.monotonic()
        with pytest.raises(WriteOutcomeUnknownError) as info:
            await write()
        await killer
        assert time.monotonic() - started < 2  # the connection's end, not the trigger's
        err = info.value
        assert err.status_code == 503
        assert "outcome is unknown" in err.public_detail
        # Either way is possible; here the terminated COMMIT did not finish.
        assert admin_execute(neondb_schema_url, "SELECT count(*) FROM ledger")[0][0] in (0, 1)
        assert db.pool_stats()["primary"]["checked_out"] == 0
        async with db.read_session() as s:  # the pool serves again
            assert (await s.execute(text("SELECT 1"))).scalar() == 1


# the synchronous engine -----------------------------------------------------------------------


async def test_sync_engine_shares_the_settings_and_stops_with_the_database(
    neondb_database_url: str,
) -> None:
    app = f"sync-{uuid.uuid4().hex[:8]}"
    url = with_query(neondb_database_url, application_name=app)
    db = Database(make_settings(url, db_statement_timeout_s=7))
    await db.start()
    try:
        engine = db.sync_engine()
        assert isinstance(engine, Engine)
        assert db.sync_engine() is engine  # made once
        assert engine.dialect.driver == "psycopg"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 40 + 2")).scalar() == 42
            # A direct endpoint: SET once per connection, as the async engine does.
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "7s"
            assert conn.execute(text("SELECT current_setting('application_name')")).scalar() == app
        with engine.begin() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "7s"
        assert engine.pool.checkedin() >= 1  # type: ignore[attr-defined]
        assert connections_of(neondb_database_url, application=app) >= 1
    finally:
        await db.stop()
    assert db._sync_engine is None
    # Disposed: its pooled connection is closed (and the async engine's too).
    await wait_until(lambda: connections_of(neondb_database_url, application=app) == 0, timeout_s=5)


async def test_sync_engine_behind_a_pooler(own_role: str) -> None:
    """Behind a transaction pooler: SET LOCAL in each transaction, nothing prepared."""
    async with open_database(own_role, db_pooler="transaction", db_statement_timeout_s=0.5) as db:
        engine = db.sync_engine()
        for _ in range(8):  # past psycopg's prepare threshold of a direct endpoint (5)
            with engine.connect() as conn:
                assert conn.execute(text("SHOW statement_timeout")).scalar() == "500ms"
                conn.execute(text("SELECT 1 AS sync_pooler_probe"))
        with engine.connect() as conn:
            prepared = conn.execute(text("SELECT count(*) FROM pg_prepared_statements"))
            assert prepared.scalar() == 0
