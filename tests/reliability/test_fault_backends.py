"""Killed backends and stale pooled connections, without pool_pre_ping.

Every pooled connection's backend is terminated (pg_terminate_backend: what a Neon compute
suspending, or an idle-connection cut, looks like to the client). The next requests
succeed: a dead connection is found on checkout without a round trip and replaced before
any statement is sent; a read that still meets a dying connection is retried.
"""

from __future__ import annotations

import asyncio

from reliability_servers import PgServer
from reliability_support import build_app, make_settings, serve

from neondb.proxy import FaultProxy

POOL = 3
ROUNDS = 30


async def _settled(proxy: FaultProxy) -> int:
    """The proxy's count once in-flight bytes are forwarded (it runs on its own thread)."""
    await asyncio.sleep(0.05)
    return proxy.round_trips


async def test_reads_and_writes_survive_killed_backends(
    fresh_db, pg_server: PgServer, driver: str
) -> None:
    settings = make_settings(fresh_db.url(), db_driver=driver, db_pool_min=POOL, db_pool_max=POOL)
    async with serve(build_app(settings)) as client:
        db = client.db
        created = await client.call("POST", "/api/tasks", json={"title": "kept"})
        assert created.status == 201
        task_id = created.body["id"]
        assert db.pool_stats()["primary"]["size"] == POOL

        # 1. Terminate every pooled backend and wait until they are gone: the pool holds
        #    only dead connections. Reads and writes succeed; each dead one is replaced.
        opened = db.connections_opened
        assert pg_server.terminate_backends(fresh_db.name) == POOL
        await asyncio.sleep(0.05)  # the drivers read the server's goodbye
        reads = await asyncio.gather(
            *(client.call("GET", f"/api/tasks/{task_id}") for _ in range(POOL))
        )
        assert [o.status for o in reads] == [200] * POOL, reads
        assert all(o.body["title"] == "kept" for o in reads)
        write = await client.call("POST", "/api/tasks", json={"title": "after kill"})
        assert write.status == 201, write
        # Use the whole pool at once: every dead connection is met, and replaced once.
        held = await asyncio.gather(
            *(client.call("GET", "/_probe/sleep?s=0.2") for _ in range(POOL))
        )
        assert [o.status for o in held] == [200] * POOL, held
        assert db.connections_opened - opened == POOL
        assert pg_server.backends(fresh_db.name) == POOL

        # 2. Terminate and read at once, many rounds with the timing shifted a little each
        #    time: whether the driver has seen the goodbye by checkout, meets it mid-statement
        #    or in the middle of opening a replacement, a read never shows an error.
        for n in range(ROUNDS):
            kill = asyncio.create_task(
                asyncio.to_thread(pg_server.terminate_backends, fresh_db.name, wait_s=0)
            )
            await asyncio.sleep(0.001 * (n % 7))
            got = await asyncio.gather(*(client.call("GET", "/api/tasks") for _ in range(POOL)))
            await kill
            assert [o.status for o in got] == [200] * POOL, [o.error or o for o in got]
            assert {o.body["total"] for o in got} == {2}
        after = await client.call("GET", "/api/tasks")
        assert after.status == 200
        assert after.body["total"] == 2
        stats = db.pool_stats()["primary"]
        assert stats["checked_out"] == 0
        assert stats["size"] <= POOL


async def test_stale_connection_costs_no_extra_round_trip(
    fresh_db, pg_server: PgServer, proxy: FaultProxy, driver: str
) -> None:
    """Measured through a FaultProxy: a one-statement request on a warm pool is one round
    trip (no pre-ping); after its backend was terminated, the request costs exactly what it
    costs on a freshly opened connection (connect + 1): the dead connection was noticed
    without sending anything."""
    settings = make_settings(
        fresh_db.url(port=proxy.port), db_driver=driver, db_pool_min=1, db_pool_max=1
    )
    async with serve(build_app(settings)) as client:
        db = client.db
        # psycopg prepares a statement on its 5th run (prepare_threshold), a one-off extra
        # round trip; get past it.
        for _ in range(6):
            assert (await client.call("GET", "/_probe/one")).status == 200

        # Warm: one statement, one round trip, request after request.
        proxy.reset_counts()
        for _ in range(5):
            assert (await client.call("GET", "/_probe/one")).status == 200
        assert await _settled(proxy) == 5
        assert proxy.connections == 0

        # The cost of a request that has to open a connection (the pool emptied).
        await db.engine.dispose()
        await _settled(proxy)  # the old connection's goodbye is not part of the count
        proxy.reset_counts()
        assert (await client.call("GET", "/_probe/one")).status == 200
        fresh_cost = await _settled(proxy)
        assert proxy.connections == 1
        assert fresh_cost >= 2  # connect (start-up, set-up) + the statement

        # The pooled connection's backend is terminated.
        assert pg_server.terminate_backends(fresh_db.name) == 1
        await asyncio.sleep(0.05)
        proxy.reset_counts()
        o = await client.call("GET", "/_probe/one")
        assert o.status == 200, o
        assert await _settled(proxy) == fresh_cost  # no ping, no failed attempt
        assert proxy.connections == 1

        # And warm again: one round trip.
        proxy.reset_counts()
        assert (await client.call("GET", "/_probe/one")).status == 200
        assert await _settled(proxy) == 1
