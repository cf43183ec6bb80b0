"""Serverless mode, proven (issue 9, item 5): with DB_SERVERLESS=true no connection outlives
a request, and what a request costs there, counted by a FaultProxy adding 5 ms each way.
The README's figures (milliseconds) come from `bench/serverless_connect.py`; the tests
assert counts only."""

from __future__ import annotations

import asyncio

from neondb_support import wait_until
from reliability_servers import FreshDB, PgServer
from reliability_support import build_app, make_settings, serve

from neondb.proxy import FaultProxy

# Per request in serverless mode, warm engine, one-statement route: the startup packet
# (trust auth here; TLS and SCRAM add theirs), the statement (asyncpg: prepare, then
# execute), and the Terminate on close. statement_timeout rides in the startup packet.
ROUND_TRIPS = {"asyncpg": 4, "psycopg": 3}


async def test_no_connection_outlives_a_request_under_load(
    pg_server: PgServer, fresh_db: FreshDB, driver: str
) -> None:
    settings = make_settings(fresh_db.url(), db_driver=driver, db_serverless=True)
    async with serve(build_app(settings)) as client:
        await wait_until(lambda: pg_server.backends(fresh_db.name) == 0, timeout_s=5)
        for i in range(5):  # one at a time: nothing is left between two requests
            created = await client.call("POST", "/api/tasks", json={"title": f"alone {i}"})
            assert created.status == 201, created
            await wait_until(lambda: pg_server.backends(fresh_db.name) == 0, timeout_s=2)

        seen: list[int] = []
        idle: list[int] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                seen.append(pg_server.backends(fresh_db.name))
                rows = pg_server.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND state = 'idle' AND backend_type = 'client backend' "
                    "AND now() - state_change > interval '200 milliseconds'",
                    (fresh_db.name,),
                )
                idle.append(int(rows[0][0]))
                await asyncio.sleep(0.02)

        async def worker(n: int) -> list[int | None]:
            statuses: list[int | None] = []
            for j in range(8):
                created = await client.call("POST", "/api/tasks", json={"title": f"{n}-{j}"})
                statuses.append(created.status)
                assert isinstance(created.body, dict), created
                got = await client.call("GET", f"/api/tasks/{created.body['id']}")
                statuses.append(got.status)
            return statuses

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(*(worker(n) for n in range(6)))
        done.set()
        await sampler
        assert all(r == [201, 200] * 8 for r in results), results
        assert max(seen) <= 6  # at most one connection per request in flight
        assert max(idle) == 0  # no connection sat idle waiting for a next request
        await wait_until(lambda: pg_server.backends(fresh_db.name) == 0, timeout_s=2)


async def test_round_trips_of_a_serverless_request(
    fresh_db: FreshDB, proxy: FaultProxy, driver: str
) -> None:
    settings = make_settings(fresh_db.url(port=proxy.port), db_driver=driver, db_serverless=True)
    async with serve(build_app(settings)) as client:
        proxy.delay_s = 0.005
        created = await client.call("POST", "/api/tasks", json={"title": "far away"})
        assert created.status == 201, created
        assert isinstance(created.body, dict)
        path = f"/api/tasks/{created.body['id']}"
        for _ in range(3):
            await asyncio.sleep(0.05)
            proxy.reset_counts()
            got = await client.call("GET", path)
            assert got.status == 200, got
            await asyncio.sleep(0.05)
            assert proxy.connections == 1
            assert proxy.round_trips == ROUND_TRIPS[driver]
        backend = await client.call("GET", "/_probe/backend")
        assert isinstance(backend.body, dict)
        assert backend.body["statement_timeout"] == "5s"  # set without a round trip of its own
