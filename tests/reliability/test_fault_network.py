"""The network between the app and the database: added latency, a database that refuses
connections while it wakes up (cold start), and one that accepts and never answers."""

from __future__ import annotations

import asyncio
import time

import pytest
from reliability_support import assert_unavailable, build_app, make_settings, serve

from neondb import Database, DatabaseUnavailableError
from neondb.proxy import FaultProxy

CONNECT_TIMEOUT_S = 2.0  # libpq rounds anything lower up to 2 s
STATEMENT_TIMEOUT_S = 1.0
DELAY_S = 0.02


async def test_api_works_with_latency_and_timeouts_still_hold(
    fresh_db, proxy: FaultProxy, driver: str
) -> None:
    proxy.delay_s = DELAY_S  # each chunk, each way: 40 ms a round trip
    settings = make_settings(
        fresh_db.url(port=proxy.port),
        db_driver=driver,
        db_connect_timeout_s=CONNECT_TIMEOUT_S,
        db_statement_timeout_s=STATEMENT_TIMEOUT_S,
        db_retry_attempts=1,
    )
    async with serve(build_app(settings)) as client:
        created = await client.call("POST", "/api/tasks", json={"title": "slow network"})
        assert created.status == 201, created
        assert created.elapsed_s >= 2 * DELAY_S
        task_id = created.body["id"]
        listed = await client.call("GET", "/api/tasks")
        assert listed.status == 200
        assert listed.body["total"] == 1
        patched = await client.call("PATCH", f"/api/tasks/{task_id}", json={"title": "renamed"})
        assert patched.status == 200
        assert patched.body["title"] == "renamed"
        done = await client.call("POST", f"/api/tasks/{task_id}/complete")
        assert done.status == 200
        assert done.body["task"]["completed"] is True
        got = await client.call("GET", f"/api/tasks/{task_id}")
        assert got.status == 200
        assert got.body["title"] == "renamed"

        # The statement timeout still fires on the server, latency or not.
        o = await client.call("GET", "/_probe/sleep?s=5")
        assert_unavailable(o, 504)
        assert o.elapsed_s < STATEMENT_TIMEOUT_S + 1.5, o

        # The connect timeout still holds: the database accepts connections and never
        # answers; the request is answered 503 once the connect attempts time out.
        proxy.mode = "stall"
        proxy.drop_all()
        await asyncio.sleep(0.1)
        o = await client.call("GET", "/api/tasks", bound_s=30)
        assert_unavailable(o)
        assert CONNECT_TIMEOUT_S * 0.9 <= o.elapsed_s < CONNECT_TIMEOUT_S + 1.5, o

        proxy.mode = "pass"
        await asyncio.sleep(client.db.breaker.remaining_s())
        again = await client.call("GET", f"/api/tasks/{task_id}")
        assert again.status == 200, again


async def test_cold_start_waits_with_backoff_then_serves(
    fresh_db, proxy: FaultProxy, driver: str
) -> None:
    """The compute wakes up 2 s after the app starts: the lifespan waits (retrying with
    backoff) instead of failing, then the app serves."""
    settings = make_settings(
        fresh_db.url(port=proxy.port),
        db_driver=driver,
        db_connect_timeout_s=CONNECT_TIMEOUT_S,
        db_startup_timeout_s=15.0,
        db_retry_backoff_s=0.05,
    )
    proxy.mode = "refuse"
    loop = asyncio.get_running_loop()
    wake = loop.call_later(2.0, setattr, proxy, "mode", "pass")
    started = time.monotonic()
    try:
        async with serve(build_app(settings)) as client:
            waited = time.monotonic() - started
            assert 2.0 <= waited < 2.0 + 3.0, waited  # backoff is capped at 2 s
            assert proxy.accepted >= 4  # it kept trying
            assert proxy.connections >= 1
            o = await client.call("POST", "/api/tasks", json={"title": "awake"})
            assert o.status == 201, o
            health = await client.call("GET", "/health/db")
            assert health.status == 200
            assert health.body["breaker"]["state"] == "closed"

            # A short outage in which the database accepts and never answers: a request
            # waits about the connect timeout, not forever, then gets a 503.
            proxy.mode = "stall"
            proxy.drop_all()
            await asyncio.sleep(0.1)
            o = await client.call("GET", "/api/tasks", bound_s=30)
            assert_unavailable(o)
            # A connect attempt that times out is not retried (neither by the connect loop
            # nor by the read's retry): one connect timeout, then the 503.
            assert o.elapsed_s >= CONNECT_TIMEOUT_S * 0.9, o
            assert o.elapsed_s < CONNECT_TIMEOUT_S + 1.5, o
            proxy.mode = "pass"
            await asyncio.sleep(client.db.breaker.remaining_s())
            o = await client.call("GET", "/api/tasks")
            assert o.status == 200, o
            assert o.body["total"] == 1, o
    finally:
        wake.cancel()


async def test_start_gives_up_after_the_startup_timeout(fresh_db, proxy: FaultProxy) -> None:
    """A database that never comes: `Database.start()` fails with DatabaseUnavailableError
    once DB_STARTUP_TIMEOUT_S has passed, with no credential in the message."""
    proxy.mode = "refuse"
    settings = make_settings(fresh_db.url(port=proxy.port), db_startup_timeout_s=1.0)
    db = Database(settings)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        await db.start()
    assert 1.0 <= time.monotonic() - started < 4.0
    assert "not reachable within DB_STARTUP_TIMEOUT_S=1 s" in str(caught.value)
    assert proxy.accepted >= 2
