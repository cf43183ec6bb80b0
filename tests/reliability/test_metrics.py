"""/metrics (issue 9, item 3): each figure moves when what it counts happens, read from the
endpoint. The pool wait and the statement time are kept apart, in metrics and in logs.

Counters are process-wide (every app here is the database `neondb`), so the tests compare
a scrape before with one after.
"""

from __future__ import annotations

import asyncio

import pytest
from neondb_support import wait_until
from reliability_servers import FreshDB, PgServer
from reliability_support import build_app, make_settings, metric, scrape, serve

OPENED = "neondb_connections_opened_total"


def opened(text: str, reason: str) -> float:
    return metric(text, OPENED, db="neondb", role="primary", reason=reason)


def http_count(text: str, method: str, route: str, status: int) -> float:
    return metric(
        text,
        "neondb_http_request_seconds_count",
        method=method,
        route=route,
        status=str(status),
    )


async def test_pool_wait_statements_errors_connections_and_http_figures_move(
    pg_server: PgServer, fresh_db: FreshDB, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        fresh_db.url(),
        db_driver=driver,
        db_pool_min=2,
        db_pool_max=2,
        db_pool_timeout_s=10,
        db_statement_timeout_s=2.0,
        db_slow_query_ms=1000,
    )
    app = build_app(settings)
    async with serve(app) as client:
        first = await scrape(client)
        assert metric(first, "neondb_pool_size", db="neondb", role="primary") == 2
        assert metric(first, "neondb_pool_checked_out", db="neondb", role="primary") == 0
        assert metric(first, "neondb_breaker_state", db="neondb", role="primary") == 0
        assert metric(first, "neondb_http_requests_in_flight") == 1  # this scrape
        db = client.db
        assert db.connections_opened == 2  # the warm-up
        assert (await client.call("GET", "/_probe/one")).status == 200  # warm the statement

        # Two requests hold both connections for 1.5 s; a third, `SELECT 1`, waits for one.
        before = await scrape(client)
        caplog.clear()
        heavy = [
            asyncio.create_task(client.call("GET", "/_probe/sleep", params={"s": 1.5}))
            for _ in range(2)
        ]
        await wait_until(lambda: db.pool_stats()["primary"]["checked_out"] == 2, timeout_s=5)
        quick = asyncio.create_task(client.call("GET", "/_probe/one"))
        await wait_until(lambda: db.pool_stats()["primary"]["waiting"] == 1, timeout_s=5)
        during = await scrape(client)
        assert metric(during, "neondb_pool_checked_out", db="neondb", role="primary") == 2
        assert metric(during, "neondb_pool_waiting", db="neondb", role="primary") == 1
        assert metric(during, "neondb_http_requests_in_flight") == 4
        assert [o.status for o in await asyncio.gather(*heavy, quick)] == [200, 200, 200]
        after = await scrape(client)

        wait = "neondb_pool_wait_seconds"
        waits = metric(after, f"{wait}_count", db="neondb", role="primary") - metric(
            before, f"{wait}_count", db="neondb", role="primary"
        )
        assert waits == 3
        # The quick read waited about 1.5 s for its connection ...
        long_waits = (
            waits
            - metric(after, f"{wait}_bucket", db="neondb", role="primary", le="1.0")
            + metric(before, f"{wait}_bucket", db="neondb", role="primary", le="1.0")
        )
        assert long_waits == 1
        # ... but its statement is timed without the wait: a fast read.
        stmt = "neondb_statement_seconds_bucket"
        fast_reads = metric(after, stmt, db="neondb", kind="read", le="0.5") - metric(
            before, stmt, db="neondb", kind="read", le="0.5"
        )
        assert fast_reads == 1
        tx = "neondb_statement_seconds_count"
        assert (
            metric(after, tx, db="neondb", kind="transaction")
            - metric(before, tx, db="neondb", kind="transaction")
            == 2
        )
        slow = [r.getMessage() for r in caplog.records if "slow statement" in r.getMessage()]
        assert len(slow) == 2, slow
        assert all("pg_sleep" in m for m in slow), slow  # the sleeps, never the waiting SELECT 1
        assert all(":s" in m and "1.5" not in m for m in slow)  # SQL, never parameters
        waited = [r.getMessage() for r in caplog.records if "pooled connection" in r.getMessage()]
        assert len(waited) == 1, waited

        route = "/_probe/one"
        assert http_count(after, "GET", route, 200) - http_count(before, "GET", route, 200) == 1
        assert (
            http_count(after, "GET", "/_probe/sleep", 200)
            - http_count(before, "GET", "/_probe/sleep", 200)
            == 2
        )

        # An error, by class, and its HTTP status by route template.
        timed_out = await client.call("GET", "/_probe/sleep", params={"s": 5})
        assert timed_out.status == 504
        created = await client.call("POST", "/api/tasks", json={"title": "counted"})
        assert created.status == 201
        assert isinstance(created.body, dict)
        await client.call("GET", f"/api/tasks/{created.body['id']}")
        await client.call("GET", "/api/tasks/999999")
        errors = await scrape(client)
        err = "neondb_errors_total"
        assert (
            metric(errors, err, db="neondb", error="QueryTimeoutError")
            - metric(after, err, db="neondb", error="QueryTimeoutError")
            == 1
        )
        assert (
            http_count(errors, "GET", "/_probe/sleep", 504)
            - http_count(after, "GET", "/_probe/sleep", 504)
            == 1
        )
        task = "/api/tasks/{task_id}"
        assert http_count(errors, "GET", task, 200) - http_count(after, "GET", task, 200) == 1
        assert http_count(errors, "GET", task, 404) - http_count(after, "GET", task, 404) == 1

        # Dead connections, replaced at checkout: counted as replacements, not as demand.
        pg_server.terminate_backends(fresh_db.name)
        await asyncio.sleep(0.1)
        replaced_before = opened(errors, "replacement")
        sleeps = [client.call("GET", "/_probe/sleep", params={"s": 0.2}) for _ in range(2)]
        results = await asyncio.gather(*sleeps)
        assert [o.status for o in results] == [200, 200]
        replaced = await scrape(client)
        assert opened(replaced, "replacement") - replaced_before == 2


async def test_connections_opened_for_warmup_recycle_and_serverless(
    fresh_db: FreshDB, driver: str
) -> None:
    recycling = make_settings(
        fresh_db.url(), db_driver=driver, db_pool_min=2, db_pool_max=2, db_pool_recycle_s=0.5
    )
    async with serve(build_app(recycling)) as client:
        warm = await scrape(client)
        await asyncio.sleep(0.7)  # the pooled connections are older than DB_POOL_RECYCLE_S
        assert (await client.call("GET", "/_probe/one")).status == 200
        recycled = await scrape(client)
        assert opened(recycled, "recycle") - opened(warm, "recycle") == 1

    serverless = make_settings(fresh_db.url(), db_driver=driver, db_serverless=True)
    async with serve(build_app(serverless)) as client:
        start = await scrape(client)
        for _ in range(3):
            assert (await client.call("GET", "/_probe/one")).status == 200
        end = await scrape(client)
        assert opened(end, "serverless") - opened(start, "serverless") == 3
        assert opened(end, "warmup") == opened(start, "warmup")


async def test_warmup_is_counted(fresh_db: FreshDB, driver: str) -> None:
    from prometheus_client import REGISTRY

    labels = {"db": "neondb", "role": "primary", "reason": "warmup"}
    before = REGISTRY.get_sample_value(OPENED, labels) or 0.0
    settings = make_settings(fresh_db.url(), db_driver=driver, db_pool_min=3, db_pool_max=4)
    async with serve(build_app(settings)) as client:
        assert opened(await scrape(client), "warmup") - before == 3
