"""Pool exhaustion and statement timeouts: answered fast and clearly, and the pool is
whole afterwards (nothing leaked, nothing left checked out)."""

from __future__ import annotations

import asyncio

from reliability_servers import PgServer
from reliability_support import assert_unavailable, build_app, make_settings, serve

POOL_TIMEOUT_S = 1.0
STATEMENT_TIMEOUT_S = 0.5


async def test_pool_exhaustion_is_a_503_after_the_pool_timeout(fresh_db, driver: str) -> None:
    settings = make_settings(
        fresh_db.url(),
        db_driver=driver,
        db_pool_min=1,
        db_pool_max=2,
        db_pool_timeout_s=POOL_TIMEOUT_S,
    )
    async with serve(build_app(settings)) as client:
        db = client.db
        assert (await client.call("POST", "/api/tasks", json={"title": "t"})).status == 201

        # Two slow requests hold the whole pool.
        slow = [asyncio.create_task(client.call("GET", "/_probe/sleep?s=2.5")) for _ in range(2)]
        for _ in range(100):
            if db.pool_stats()["primary"]["checked_out"] == 2:
                break
            await asyncio.sleep(0.02)
        assert db.pool_stats()["primary"]["checked_out"] == 2

        # Extra requests wait DB_POOL_TIMEOUT_S for a connection, then get a 503.
        extra = await asyncio.gather(
            client.call("GET", "/api/tasks"),
            client.call("POST", "/api/tasks", json={"title": "no room"}),
            client.call("GET", "/_probe/one"),
        )
        for o in extra:
            assert_unavailable(o)
            assert o.body == {"detail": "database busy, retry later"}
            assert o.retry_after == "1"
            assert POOL_TIMEOUT_S * 0.9 <= o.elapsed_s < POOL_TIMEOUT_S * 2.5, o
        # Liveness needs no connection: it answers at once.
        live = await client.call("GET", "/health", bound_s=POOL_TIMEOUT_S)
        assert live.status == 200
        assert live.body == {"status": "ok"}
        assert live.elapsed_s < 0.5

        assert [o.status for o in await asyncio.gather(*slow)] == [200, 200]

        # Recovered: nothing checked out, the same two connections, requests succeed.
        stats = db.pool_stats()["primary"]
        assert stats["checked_out"] == 0
        assert stats["size"] == 2
        assert db.breaker.state == "closed"  # a busy pool is not a connection failure
        got = await client.call("GET", "/api/tasks")
        assert got.status == 200
        assert [t["title"] for t in got.body["items"]] == ["t"]
        health = await client.call("GET", "/health/db")
        assert health.status == 200
        assert health.body["pool"]["primary"]["checked_out"] == 0


async def test_statement_timeout_is_a_504_and_the_connection_stays_healthy(
    fresh_db, pg_server: PgServer, driver: str
) -> None:
    settings = make_settings(
        fresh_db.url(),
        db_driver=driver,
        db_pool_min=1,
        db_pool_max=1,
        db_statement_timeout_s=STATEMENT_TIMEOUT_S,
    )
    async with serve(build_app(settings)) as client:
        db = client.db
        before = await client.call("GET", "/_probe/backend")
        assert before.status == 200
        assert before.body["statement_timeout"] == f"{round(STATEMENT_TIMEOUT_S * 1000)}ms"
        opened = db.connections_opened

        # The server cancels the statement (SQLSTATE 57014): 504, well before pg_sleep ends.
        for path in ("/_probe/sleep?s=3", "/_probe/sleep-autocommit?s=3"):
            o = await client.call("GET", path)
            assert_unavailable(o, 504)
            assert o.body == {"detail": "database statement timed out"}
            assert o.elapsed_s < 2.0, o

        # The connection went back to the pool healthy and is used again: same backend,
        # no new connection, nothing left checked out.
        after = await client.call("GET", "/_probe/backend")
        assert after.status == 200
        assert after.body["pid"] == before.body["pid"]
        assert db.connections_opened == opened
        assert (await client.call("POST", "/api/tasks", json={"title": "next"})).status == 201
        stats = db.pool_stats()["primary"]
        assert stats == {**stats, "size": 1, "checked_out": 0}
        assert pg_server.backends(fresh_db.name) == 1


async def test_client_backstop_when_the_server_never_cancels(fresh_db, pg_server: PgServer) -> None:
    """The server's timeout switched off: the client-side backstop (DB_STATEMENT_TIMEOUT_S
    plus 2 s) ends the wait with a 504; that connection, in an unknown state, is discarded
    and a new one serves the next request."""
    settings = make_settings(
        fresh_db.url(), db_pool_min=1, db_pool_max=1, db_statement_timeout_s=STATEMENT_TIMEOUT_S
    )
    backstop_s = settings.statement_backstop_s
    assert backstop_s is not None
    async with serve(build_app(settings)) as client:
        db = client.db
        first = await client.call("GET", "/_probe/backend")
        opened = db.connections_opened
        o = await client.call("GET", "/_probe/sleep-unbounded?s=30")
        assert_unavailable(o, 504)
        assert backstop_s * 0.9 <= o.elapsed_s < backstop_s + 2.0, o
        nxt = await client.call("GET", "/_probe/backend")
        assert nxt.status == 200
        assert nxt.body["pid"] != first.body["pid"]
        assert db.connections_opened == opened + 1
        stats = db.pool_stats()["primary"]
        assert stats["checked_out"] == 0
        assert stats["size"] == 1
