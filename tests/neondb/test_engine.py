"""neondb.engine: round trips per session kind (counted by FaultProxy), no pre-ping,
pooler configuration, and dead pooled connections replaced without a round trip."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from neondb_support import (
    backend_pids,
    open_database,
    proxied_url,
    settled_round_trips,
    wait_until,
)
from sqlalchemy import text

from neondb import Database, QueryTimeoutError
from neondb.engine import connection_is_dead
from neondb.proxy import FaultProxy
from neondb.testing import admin_execute

# round trips ------------------------------------------------------------------------------


async def round_trips_of(proxy: FaultProxy, db: Database, kind: str, sql: str) -> int:
    proxy.reset_counts()
    async with getattr(db, kind)() as s:
        await s.execute(text(sql))
    trips = await settled_round_trips(proxy)
    assert proxy.connections == 0  # a pooled connection, no new one
    return trips


async def test_round_trips_per_session_kind(
    proxy: FaultProxy, neondb_schema_url: str, driver: str
) -> None:
    url = proxied_url(proxy, neondb_schema_url)
    async with open_database(url, db_driver=driver, db_pool_min=1, db_pool_max=1) as db:
        async with db.autocommit() as s:
            await s.execute(text("CREATE TABLE rt (n int)"))
        cases = [
            ("read_session", "SELECT count(*) FROM rt", 1),
            ("autocommit", "INSERT INTO rt VALUES (1)", 1),
            ("session", "INSERT INTO rt VALUES (1)", 3),  # BEGIN, the statement, COMMIT
            ("transaction", "SELECT count(*) FROM rt", 3),
        ]
        # Preparing a statement costs one extra round trip, once: asyncpg on its first run,
        # psycopg on its fifth (prepare_threshold).
        for _ in range(6):
            for kind, sql, _expected in cases:
                async with getattr(db, kind)() as s:
                    await s.execute(text(sql))
        for _ in range(3):
            for kind, sql, expected in cases:
                assert (kind, await round_trips_of(proxy, db, kind, sql)) == (kind, expected)


async def test_checkout_costs_no_round_trip(
    proxy: FaultProxy, neondb_database_url: str, driver: str
) -> None:
    url = proxied_url(proxy, neondb_database_url)
    async with open_database(url, db_driver=driver, db_pool_min=2, db_pool_max=2) as db:
        proxy.reset_counts()
        for _ in range(5):
            async with db.engine.connect():  # checkout and return, no statement: no pre-ping
                pass
            async with db.read_session(), db.autocommit(), db.session():  # unused sessions
                pass
        assert await settled_round_trips(proxy) == 0
        assert proxy.connections == 0


async def test_session_without_a_statement_sends_nothing(
    proxy: FaultProxy, neondb_database_url: str, driver: str
) -> None:
    url = proxied_url(proxy, neondb_database_url)
    async with open_database(url, db_driver=driver) as db:
        proxy.reset_counts()
        async with db.session() as s:
            assert not s.in_transaction()
        assert await settled_round_trips(proxy) == 0


# behind a transaction pooler ---------------------------------------------------------------


@pytest.fixture
def own_role(neondb_database_url: str) -> Iterator[str]:
    """The test server's URL as a role of its own: pooler mode sets a role default
    (ALTER ROLE ... SET statement_timeout), which must not touch the shared role."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin_execute(neondb_database_url, f'CREATE ROLE "{role}" LOGIN')
    from neondb.url import parse_url

    url = parse_url(neondb_database_url).url.set(username=role)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        admin_execute(neondb_database_url, f'DROP ROLE "{role}"')


async def test_pooler_mode_uses_no_named_prepared_statements(own_role: str, driver: str) -> None:
    async with open_database(own_role, db_driver=driver, db_pooler="transaction") as db:
        assert db.behind_pooler()
        for _ in range(8):  # past psycopg's prepare threshold of a direct endpoint (5)
            async with db.read_session() as s:
                await s.execute(text("SELECT 1 AS pooler_probe"))
        async with db.read_session() as s:
            prepared = await s.scalar(text("SELECT count(*) FROM pg_prepared_statements"))
        assert prepared == 0


async def test_direct_mode_prepares_repeated_statements(own_role: str, driver: str) -> None:
    async with open_database(own_role, db_driver=driver, db_pooler="none") as db:
        assert not db.behind_pooler()
        for _ in range(8):
            async with db.read_session() as s:
                await s.execute(text("SELECT 1 AS direct_probe"))
        async with db.read_session() as s:
            prepared = await s.scalar(
                text(
                    "SELECT count(*) FROM pg_prepared_statements "
                    "WHERE position('direct' || '_probe' IN statement) > 0"
                )
            )
        assert prepared == 1


async def test_pooler_mode_statement_timeout_by_role_default_and_set_local(
    own_role: str, driver: str, neondb_database_url: str
) -> None:
    role = own_role.split("://", 1)[1].split("@", 1)[0]
    settings = {"db_driver": driver, "db_pooler": "transaction", "db_statement_timeout_s": 0.5}
    async with open_database(own_role, **settings) as db:
        # Start-up set the role's default, for single statements outside a transaction.
        rows = admin_execute(
            neondb_database_url,
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = %s",
            (role,),
        )
        assert rows == [(["statement_timeout=500"],)]
        with pytest.raises(QueryTimeoutError):
            async with db.read_session() as s:
                await s.execute(text("SELECT pg_sleep(3)"))

        # Without the role default, explicit transactions still get SET LOCAL.
        admin_execute(neondb_database_url, f'ALTER ROLE "{role}" RESET statement_timeout')
        await db.engine.dispose()
        async with db.read_session() as s:
            assert (await s.execute(text("SHOW statement_timeout"))).scalar_one() == "0"
        async with db.session() as s:
            assert (await s.execute(text("SHOW statement_timeout"))).scalar_one() == "500ms"
        with pytest.raises(QueryTimeoutError):
            async with db.session() as s:
                await s.execute(text("SELECT pg_sleep(3)"))


async def test_direct_mode_sets_statement_timeout_once_per_connection(
    neondb_database_url: str, driver: str
) -> None:
    async with open_database(neondb_database_url, db_driver=driver, db_statement_timeout_s=7) as db:
        for kind in ("read_session", "autocommit", "session"):
            async with getattr(db, kind)() as s:
                assert (await s.execute(text("SHOW statement_timeout"))).scalar_one() == "7s"


# dead pooled connections -------------------------------------------------------------------


async def test_terminated_pooled_connections_are_replaced(
    neondb_schema_url: str, driver: str
) -> None:
    async with open_database(
        neondb_schema_url, db_driver=driver, db_pool_min=3, db_pool_max=3
    ) as db:
        async with db.autocommit() as s:
            await s.execute(text("CREATE TABLE stale (n int)"))
        pids = await backend_pids(db)
        assert len(pids) == 3
        opened = db.connections_opened
        admin_execute(
            neondb_schema_url,
            "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
            (sorted(pids),),
        )
        await wait_until(
            lambda: (
                not admin_execute(
                    neondb_schema_url,
                    "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)",
                    (sorted(pids),),
                )
            )
        )
        await asyncio.sleep(0.1)  # the connections sit idle for a moment, as in production

        async with db.read_session() as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1
        # A write is never retried, so this succeeds only because the checkout noticed the
        # dead connection before sending anything.
        for n in range(3):
            async with db.autocommit() as s:
                await s.execute(text("INSERT INTO stale VALUES (:n)"), {"n": n})
        async with db.session() as s:
            await s.execute(text("INSERT INTO stale VALUES (3)"))
        assert admin_execute(neondb_schema_url, "SELECT count(*) FROM stale") == [(4,)]
        assert db.connections_opened > opened
        assert not (await backend_pids(db)) & pids


async def test_dead_connection_check_sends_nothing(
    proxy: FaultProxy, neondb_database_url: str, driver: str
) -> None:
    url = proxied_url(proxy, neondb_database_url)
    async with open_database(url, db_driver=driver, db_pool_min=1, db_pool_max=1) as db:
        async with db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert not connection_is_dead(raw)
            proxy.reset_counts()
            for _ in range(10):
                assert not connection_is_dead(raw)
            assert await settled_round_trips(proxy) == 0
            proxy.drop_all()
            await wait_until(lambda: connection_is_dead(raw), timeout_s=5)
        assert not connection_is_dead(object())
