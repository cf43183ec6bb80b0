"""neondb.engine: round trips per session kind (counted by FaultProxy), no pre-ping,
pooler configuration (and the driver chosen there), dead pooled connections replaced
without a round trip, and connections the server refuses (503, not retried)."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from neondb_support import (
    backend_pids,
    make_settings,
    open_database,
    proxied_url,
    role_of,
    settled_round_trips,
    wait_until,
    with_query,
)
from sqlalchemy import text

from neondb import Database, DatabaseUnavailableError, NeonDB, QueryTimeoutError, ReadSession
from neondb.engine import connection_is_dead
from neondb.errors import is_transient
from neondb.proxy import FaultProxy
from neondb.testing import admin_execute
from neondb.url import parse_url

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


@pytest.mark.parametrize(
    ("db_driver", "driver", "trips"),
    [(None, "psycopg", 1), ("asyncpg", "asyncpg", 2)],
    ids=["default-driver", "asyncpg"],
)
async def test_round_trips_per_statement_behind_a_pooler(
    proxy: FaultProxy, own_role: str, db_driver: str | None, driver: str, trips: int
) -> None:
    """DB_POOLER=transaction, no `+driver` in the URL. Without DB_DRIVER the driver is
    psycopg: it sends an unnamed statement's Parse, Bind and Execute in one flight, so a
    warm read or autocommit write costs 1 round trip.

    asyncpg, asked for explicitly, costs 2: it cannot execute a statement it has not
    prepared, so it sends Parse/Describe and waits for the description (round trip 1), then
    Bind/Execute (round trip 2). On a direct endpoint its statement cache saves the first
    after a statement's first run; behind a transaction pooler that cache is off (a named
    statement does not outlive its transaction, and the next transaction may run on
    another server connection), so every statement pays both."""
    url = proxied_url(proxy, own_role)
    assert parse_url(url).driver_hint is None
    async with open_database(
        url, db_driver=db_driver, db_pooler="transaction", db_pool_min=1, db_pool_max=1
    ) as db:
        assert db.driver == driver
        async with db.autocommit() as s:
            await s.execute(text("CREATE TEMP TABLE rt (n int)"))  # pool of one: it stays
        cases = [
            ("read_session", "SELECT count(*) FROM rt"),
            ("autocommit", "INSERT INTO rt VALUES (1)"),
        ]
        for _ in range(6):  # warm: past psycopg's prepare threshold of a direct endpoint
            for kind, sql in cases:
                async with getattr(db, kind)() as s:
                    await s.execute(text(sql))
        for _ in range(3):
            for kind, sql in cases:
                assert (kind, await round_trips_of(proxy, db, kind, sql)) == (kind, trips)


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
    role = role_of(own_role)
    settings = {"db_driver": driver, "db_pooler": "transaction", "db_statement_timeout_s": 0.5}
    async with open_database(own_role, **settings) as db:
        # Start-up set the role's default, for single statements outside a transaction.
        rows = admin_execute(
            neondb_database_url,
            "SELECT d.datname, s.setconfig FROM pg_db_role_setting s "
            "JOIN pg_roles r ON r.oid = s.setrole LEFT JOIN pg_database d ON d.oid = s.setdatabase "
            "WHERE r.rolname = %s",
            (role,),
        )
        # In this database only: the role may serve other databases with other needs.
        database = parse_url(own_role).url.database
        assert rows == [(database, ["statement_timeout=500"])]
        with pytest.raises(QueryTimeoutError):
            async with db.read_session() as s:
                await s.execute(text("SELECT pg_sleep(3)"))

        # Without the role default, explicit transactions still get SET LOCAL.
        admin_execute(
            neondb_database_url,
            f'ALTER ROLE "{role}" IN DATABASE "{database}" RESET statement_timeout',
        )
        await db.engine.dispose()
        async with db.read_session() as s:
            assert (await s.execute(text("SHOW statement_timeout"))).scalar_one() == "0"
        async with db.session() as s:
            assert (await s.execute(text("SHOW statement_timeout"))).scalar_one() == "500ms"
        with pytest.raises(QueryTimeoutError):
            async with db.session() as s:
                await s.execute(text("SELECT pg_sleep(3)"))


async def test_pooler_role_default_in_a_database_whose_name_needs_quotes(
    own_role: str, neondb_database_url: str
) -> None:
    """`ALTER ROLE ... IN DATABASE <name>` with a name that is not a plain identifier."""
    role = role_of(own_role)
    name = f"Neon-DB {uuid.uuid4().hex[:6]}"
    admin_execute(neondb_database_url, f'CREATE DATABASE "{name}" OWNER "{role}"')
    try:
        url = parse_url(own_role).with_database(name).url.render_as_string(hide_password=False)
        settings = {"db_pooler": "transaction", "db_statement_timeout_s": 0.7}
        async with open_database(url, **settings) as db, db.read_session() as s:
            assert (await s.execute(text("SHOW statement_timeout"))).scalar() == "700ms"
        rows = admin_execute(
            neondb_database_url,
            "SELECT d.datname, s.setconfig FROM pg_db_role_setting s "
            "JOIN pg_database d ON d.oid = s.setdatabase WHERE s.setrole = %s::regrole",
            (role,),
        )
        assert rows == [(name, ["statement_timeout=700"])]
    finally:
        admin_execute(neondb_database_url, f'DROP DATABASE "{name}" WITH (FORCE)')


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


@contextmanager
def descriptors_past(number: int) -> Iterator[None]:
    """Hold open descriptors until the next one the process gets is above `number` (every
    lower slot taken), as a server holding that many client sockets does; the soft
    RLIMIT_NOFILE is raised for it if needed and put back after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = number + 200  # room for the pool's sockets and the test's own files
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < number:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def socket_of(raw: Any) -> int:
    """The descriptor number of a pooled driver connection's socket."""
    conn = raw.driver_connection
    if hasattr(conn, "pgconn"):
        return int(conn.pgconn.socket)
    return int(conn._transport.get_extra_info("socket").fileno())


async def test_pooled_connections_stay_alive_past_1024_descriptors(
    neondb_schema_url: str, driver: str
) -> None:
    """select() cannot take a descriptor >= 1024: the psycopg checkout check used it and
    called every pooled connection dead, so each checkout reconnected (or failed, 503)."""
    with descriptors_past(1100):
        neon = NeonDB(make_settings(neondb_schema_url, db_driver=driver, db_pool_max=5))
        app = FastAPI(lifespan=neon.lifespan)
        neon.install(app)

        @app.get("/one")
        async def one(session: ReadSession) -> int:
            await asyncio.sleep(0.01)  # hold the connection so that requests overlap
            return int((await session.execute(text("SELECT 1"))).scalar_one())

        async with (
            LifespanManager(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client,
        ):
            db = neon.db
            async with db.engine.connect() as conn:
                assert socket_of(await conn.get_raw_connection()) > 1024
            statuses: list[int] = []
            # The first burst fills the pool (5 connections); later ones only reuse them.
            for _ in range(4):
                replies = await asyncio.gather(*(client.get("/one") for _ in range(20)))
                statuses += [r.status_code for r in replies]
                if len(statuses) == 20:
                    opened = db.connections_opened
                    assert opened == 5
            assert statuses == [200] * 80
            assert db.connections_opened == opened
            async with db.engine.connect() as conn:
                assert not connection_is_dead(await conn.get_raw_connection())


# connections the server refuses --------------------------------------------------------------

SECRET = "Pw-4e9b-never-shown"  # distinctive, so that a leak is easy to spot


@pytest.mark.parametrize(
    ("refusal", "words"),
    [
        ("missing database", "does not exist"),
        ("NOLOGIN role", "is not permitted to log in"),
        ("missing role", "does not exist"),
    ],
)
async def test_refused_connection_is_unavailable_and_not_retried(
    proxy: FaultProxy,
    own_role: str,
    neondb_database_url: str,
    driver: str,
    refusal: str,
    words: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused login or a missing database: a 503 (not a 500), `transient` False, so
    neither the connect retries nor start-up's wait repeat it, and the server's own words
    (which say what to fix) with the password masked."""
    url = parse_url(own_role).url.set(password=SECRET)
    if refusal == "missing database":
        url = url.set(database=f"no_such_db_{uuid.uuid4().hex[:8]}")
    elif refusal == "NOLOGIN role":
        admin_execute(neondb_database_url, f'ALTER ROLE "{url.username}" NOLOGIN')
    else:
        url = url.set(username=f"no_such_role_{uuid.uuid4().hex[:8]}")
    raw = proxied_url(proxy, url.render_as_string(hide_password=False))
    db = Database(make_settings(raw, db_driver=driver, db_retry_attempts=3))
    caplog.set_level(logging.DEBUG)
    proxy.reset_counts()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.start()
    elapsed = time.monotonic() - started
    err = info.value
    assert type(err) is DatabaseUnavailableError
    assert err.transient is False
    assert not is_transient(err)
    assert err.status_code == 503
    assert err.public_detail == "database unavailable, retry later"
    assert words in str(err)
    assert str(err).startswith("cannot connect to 127.0.0.1")
    for shown in (str(err), repr(err), caplog.text):
        assert SECRET not in shown
    # Not retried: one connection attempt, no wait for DB_STARTUP_TIMEOUT_S (10 s here).
    assert proxy.accepted == 1
    assert elapsed < 2
    assert db.breaker.consecutive_failures == 0  # nor counted as an outage
    assert db._engine is None


@pytest.mark.parametrize(("attrs", "works"), [("read-write", True), ("standby", False)])
async def test_target_session_attrs_reaches_the_driver(
    neondb_database_url: str, driver: str, attrs: str, works: bool
) -> None:
    """The test server is a primary: `standby` must be refused, which proves the
    parameter reached the driver (asyncpg used to drop it)."""
    url = with_query(neondb_database_url, target_session_attrs=attrs)
    if works:
        async with open_database(url, db_driver=driver) as db, db.read_session() as s:
            assert (await s.execute(text("SELECT pg_is_in_recovery()"))).scalar() is False
        return
    db = Database(make_settings(url, db_driver=driver))
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.start()
    assert info.value.transient is False  # a primary does not become a standby by waiting
    assert time.monotonic() - started < 2
    assert db._engine is None


# time zone ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pooler", ["none", "transaction"])
async def test_sessions_speak_utc_whatever_the_role_default(
    own_role: str, driver: str, pooler: str
) -> None:
    """psycopg decodes timestamptz text in the session's zone: 14 hours east of UTC,
    9999-12-31 23:30 UTC is year 10000, which Python cannot hold."""
    admin_execute(
        own_role, f"ALTER ROLE \"{role_of(own_role)}\" SET TimeZone = 'Pacific/Kiritimati'"
    )
    url = with_query(own_role, options="-c search_path=public")  # merged with ours
    async with open_database(url, db_driver=driver, db_pooler=pooler) as db:
        probe = text(
            "SELECT current_setting('TimeZone'), current_setting('search_path'), "
            "timestamptz '9999-12-31 23:30+00'"
        )
        for kind in ("read_session", "autocommit", "session"):
            async with getattr(db, kind)() as s:
                zone, path, last = (await s.execute(probe)).one()
            assert (kind, zone, last.isoformat()) == (kind, "UTC", "9999-12-31T23:30:00+00:00")
            assert path == "public"
        with db.sync_engine().connect() as conn:
            assert conn.execute(probe).one()[0] == "UTC"
