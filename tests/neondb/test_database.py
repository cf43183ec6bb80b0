"""neondb.database: lifecycle, pool figures, no connection leak, waiting for a free
connection, serverless mode and the read replica URL."""

from __future__ import annotations

import asyncio
import random

import pytest
from neondb_support import make_settings, open_database
from sqlalchemy import text

from neondb import Database


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
    with pytest.raises(Exception, match="no_such_database_here"):
        await db.start()
    assert db._engine is None  # stopped again
