"""Behind a real PgBouncer 1.18 in transaction mode (Neon's -pooler endpoint), both drivers.

`max_prepared_statements` is left at 0 (the 1.18 default): a named prepared statement
does not survive its transaction, and the next transaction of the same client may run on
another server connection. With DB_POOLER=transaction neondb makes asyncpg use unnamed
statements and psycopg never prepare; the API runs with several clients multiplexed over
two server connections without a prepared-statement error.

PgBouncer rejects a `statement_timeout` startup parameter, and session SETs do not stick:
the timeout is `SET LOCAL` in explicit transactions and the role's default for single
statements (set by neondb at start-up). Both are checked here: the server cancels a long
pg_sleep either way (504).

Session state, as it really is in transaction mode: PgBouncer 1.18 runs no reset query
between clients (`server_reset_query` is for session mode), so a session-level `SET` or
`set_config(..., false)` made by one client *is* seen by the next client that gets the
same server connection; transaction-scoped state (`SET LOCAL`, `set_config(..., true)`)
ends with its transaction and is never seen by anyone else. neondb uses only the latter
behind a pooler.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import psycopg
import pytest
from reliability_servers import PgBouncer
from reliability_support import Client, assert_unavailable, build_app, make_settings, serve
from sqlalchemy import text

from neondb import Database
from neondb.testing import admin_execute

STATEMENT_TIMEOUT_S = 0.5
CLIENTS = 4
ROUNDS = 4  # past psycopg's prepare threshold (5 runs of a statement) in total


async def _exercise(client: Client, n: int, statuses: Counter[str]) -> None:
    """A representative part of the API, each step checked."""

    async def call(name: str, method: str, path: str, expect: int, **kw: object) -> object:
        o = await client.call(method, path, **kw)  # type: ignore[arg-type]
        statuses[f"{name} {o.status}"] += 1
        assert o.status == expect, o
        return o.body

    for i in range(ROUNDS):
        task = await call(
            "create", "POST", "/api/tasks", 201, json={"title": f"c{n}-{i}", "tags": ["x"]}
        )
        assert isinstance(task, dict)
        tid = task["id"]
        listed = await call("list", "GET", "/api/tasks?limit=100", 200)
        assert isinstance(listed, dict)
        assert tid in {t["id"] for t in listed["items"]}
        got = await call("get", "GET", f"/api/tasks/{tid}", 200)
        assert isinstance(got, dict)
        assert got["title"] == f"c{n}-{i}"
        patched = await call("patch", "PATCH", f"/api/tasks/{tid}", 200, json={"priority": "high"})
        assert isinstance(patched, dict)
        assert patched["priority"] == "high"
        done = await call("complete", "POST", f"/api/tasks/{tid}/complete", 200)
        assert isinstance(done, dict)
        assert done["task"]["completed"] is True
        await call("delete", "DELETE", f"/api/tasks/{tid}", 204)
        await call("gone", "GET", f"/api/tasks/{tid}", 404)

        conv = await call(
            "conversation", "POST", "/api/conversations", 201, json={"title": f"c{n}"}
        )
        assert isinstance(conv, dict)
        cid = conv["id"]
        for role in ("user", "assistant"):
            await call(
                "message",
                "POST",
                f"/api/conversations/{cid}/messages",
                201,
                json={"role": role, "content": f"{role} {i}"},
            )
        msgs = await call("messages", "GET", f"/api/conversations/{cid}/messages", 200)
        assert isinstance(msgs, dict)
        assert [m["role"] for m in msgs["items"]] == ["user", "assistant"]


async def test_api_through_pgbouncer_transaction_mode(
    fresh_db, start_pgbouncer, driver: str
) -> None:
    bouncer: PgBouncer = start_pgbouncer([fresh_db.role], pool_size=2)
    settings = make_settings(
        fresh_db.url(port=bouncer.port),
        db_driver=driver,
        db_pooler="transaction",
        db_pool_min=2,
        db_pool_max=CLIENTS,
        db_statement_timeout_s=STATEMENT_TIMEOUT_S,
    )
    async with serve(build_app(settings)) as client:  # start-up migrates through PgBouncer
        db = client.db
        assert db.behind_pooler()

        # CLIENTS concurrent users of the API over 2 server connections: every transaction
        # may land on either; a named prepared statement would be missing half the time.
        statuses: Counter[str] = Counter()
        await asyncio.gather(*(_exercise(client, n, statuses) for n in range(CLIENTS)))
        assert sum(statuses.values()) == CLIENTS * ROUNDS * 11
        assert all(key.split()[1] in {"200", "201", "204", "404"} for key in statuses), statuses

        # statement_timeout is enforced by the server behind the pooler: in an explicit
        # transaction (SET LOCAL) and for a single autocommit statement (the role default).
        timeout_ms = f"{round(STATEMENT_TIMEOUT_S * 1000)}ms"
        tx = await client.call("GET", "/_probe/backend-tx")
        assert tx.status == 200
        assert tx.body["statement_timeout"] == timeout_ms
        single = await client.call("GET", "/_probe/backend")
        assert single.status == 200
        assert single.body["statement_timeout"] == timeout_ms
        # The role's default in this database only (ALTER ROLE ... IN DATABASE).
        role_settings = fresh_db.execute(
            "SELECT unnest(setconfig) FROM pg_db_role_setting "
            "WHERE setrole = %s::regrole "
            "AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (fresh_db.role,),
        )
        assert (f"statement_timeout={round(STATEMENT_TIMEOUT_S * 1000)}",) in role_settings
        for path in ("/_probe/sleep?s=3", "/_probe/sleep-autocommit?s=3"):
            # Two at once: both server connections are tried, each cancels.
            got = await asyncio.gather(client.call("GET", path), client.call("GET", path))
            for o in got:
                assert_unavailable(o, 504)
                assert o.elapsed_s < 2.5, o
        # The pool is whole after the timeouts; the API still answers.
        assert db.pool_stats()["primary"]["checked_out"] == 0
        assert (await client.call("GET", "/api/tasks")).status == 200

    assert "prepared statement" not in bouncer.log()


async def test_session_state_behind_pgbouncer(fresh_db, start_pgbouncer, driver: str) -> None:
    """One server connection (pool_size=1), so every client shares it: what leaks, leaks."""
    bouncer: PgBouncer = start_pgbouncer([fresh_db.role], pool_size=1)
    url = fresh_db.url(port=bouncer.port)
    settings = make_settings(
        url,
        db_driver=driver,
        db_pooler="transaction",
        db_pool_min=1,
        db_pool_max=2,
        db_statement_timeout_s=STATEMENT_TIMEOUT_S,
    )

    def other_client(sql: str) -> object:
        """Another application: its own connection through the same PgBouncer."""
        return admin_execute(url, sql)[0][0]

    async with serve(build_app(settings)) as client:
        # Transaction-scoped state is seen inside its transaction, by nobody afterwards.
        o = await client.call("POST", "/_probe/setting-tx?name=app.tenant&value=alice&local=true")
        assert o.status == 200
        assert o.body == {"seen_inside": "alice"}
        assert await asyncio.to_thread(
            other_client, "SELECT current_setting('app.tenant', true)"
        ) in (None, "")
        again = await client.call("GET", "/_probe/setting?name=app.tenant")
        assert again.status == 200
        assert again.body["value"] in (None, "")

        # neondb's own SET LOCAL statement_timeout ends with its transaction too; outside,
        # another client sees the role's default (which neondb set to the same value).
        await asyncio.to_thread(
            admin_execute,
            fresh_db.server.url(fresh_db.name),
            f'ALTER ROLE "{fresh_db.role}" IN DATABASE "{fresh_db.name}" SET statement_timeout = 0',
        )
        before = await asyncio.to_thread(other_client, "SHOW statement_timeout")
        tx = await client.call("GET", "/_probe/backend-tx")
        assert tx.body["statement_timeout"] == f"{round(STATEMENT_TIMEOUT_S * 1000)}ms"
        after = await asyncio.to_thread(other_client, "SHOW statement_timeout")
        assert after == before

        # A session-level setting made by one client IS seen by the next one on the same
        # server connection: PgBouncer does not reset it in transaction mode. This is why
        # neondb never uses one behind a pooler (and why your code should not either).
        o = await client.call("POST", "/_probe/setting?name=app.tenant&value=bob&local=false")
        assert o.status == 200
        assert (
            await asyncio.to_thread(other_client, "SELECT current_setting('app.tenant', true)")
            == "bob"
        )


async def test_prepared_statements_never_break(fresh_db, start_pgbouncer, driver: str) -> None:
    """Made to happen on purpose: a statement runs a few times on server connection 1, then
    another client holds connection 1 in a transaction, so the next run lands on connection
    2. The driver's defaults fail there (the control: this PgBouncer really is transaction
    mode without prepared statements); neondb behind the pooler does not."""
    bouncer: PgBouncer = start_pgbouncer([fresh_db.role], pool_size=2)
    url = fresh_db.url(port=bouncer.port)
    query = "SELECT $1::int + 1" if driver == "asyncpg" else "SELECT %s::int + 1"
    holder = await asyncpg.connect(
        host="127.0.0.1",
        port=bouncer.port,
        user=fresh_db.role,
        database=fresh_db.name,
        ssl=False,
        statement_cache_size=0,
    )

    @asynccontextmanager
    async def connection_1_held() -> AsyncIterator[None]:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1")
        try:
            yield
        finally:
            await tx.rollback()

    try:
        # Control: the driver with its defaults.
        if driver == "asyncpg":
            raw: Any = await asyncpg.connect(
                host="127.0.0.1",
                port=bouncer.port,
                user=fresh_db.role,
                database=fresh_db.name,
                ssl=False,
            )
            run: Any = lambda i: raw.fetchval(query, i)  # noqa: E731
        else:
            raw = await psycopg.AsyncConnection.connect(
                f"host=127.0.0.1 port={bouncer.port} user={fresh_db.role} dbname={fresh_db.name}",
                autocommit=True,
            )

            async def run(i: int) -> Any:
                return (await (await raw.execute(query, (i,))).fetchone())[0]  # type: ignore[index]

        try:
            for i in range(6):  # psycopg prepares on the 5th run by default
                assert await run(i) == i + 1
            async with connection_1_held():
                with pytest.raises(Exception, match=r"prepared statement .* does not exist"):
                    await run(7)
        finally:
            await raw.close()

        # neondb, DB_POOLER=transaction: the same sequence works.
        db = Database(
            make_settings(
                url, db_driver=driver, db_pooler="transaction", db_pool_min=1, db_pool_max=1
            )
        )
        await db.start()
        try:
            stmt = text("SELECT CAST(:i AS int) + 1")
            for i in range(6):
                async with db.autocommit() as s:
                    assert (await s.execute(stmt, {"i": i})).scalar_one() == i + 1
                async with db.session() as s:
                    assert (await s.execute(stmt, {"i": i})).scalar_one() == i + 1
            async with connection_1_held():
                async with db.autocommit() as s:
                    assert (await s.execute(stmt, {"i": 7})).scalar_one() == 8
                async with db.session() as s:
                    assert (await s.execute(stmt, {"i": 8})).scalar_one() == 9
        finally:
            await db.stop()
    finally:
        await holder.close()


async def test_sessions_speak_utc_behind_pgbouncer(fresh_db, start_pgbouncer, driver: str) -> None:
    """A role whose default zone is 14 hours east of UTC, behind PgBouncer 1.18 (which
    refuses an `options` startup parameter): each session is in UTC, and an instant that
    is year 10000 in that zone decodes. Another client of the same server connection keeps
    its own zone (PgBouncer tracks TimeZone per client)."""
    fresh_db.execute(f"ALTER ROLE \"{fresh_db.role}\" SET TimeZone = 'Pacific/Kiritimati'")
    bouncer: PgBouncer = start_pgbouncer([fresh_db.role], pool_size=1)
    url = fresh_db.url(port=bouncer.port)
    settings = make_settings(url, db_driver=driver, db_pooler="transaction", db_pool_max=2)
    db = Database(settings)
    await db.start()
    try:
        probe = text("SELECT current_setting('TimeZone'), timestamptz '9999-12-31 23:30+00'")
        for kind in ("read_session", "autocommit", "session"):
            async with getattr(db, kind)() as s:
                zone, last = (await s.execute(probe)).one()
            assert (kind, zone, last.isoformat()) == (kind, "UTC", "9999-12-31T23:30:00+00:00")
        with psycopg.connect(url, autocommit=True) as other:
            row = other.execute("SELECT current_setting('TimeZone')").fetchone()
        assert row == ("Pacific/Kiritimati",)
    finally:
        await db.stop()
