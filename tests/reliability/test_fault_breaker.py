"""Circuit breaker: opens after DB_BREAKER_FAILURES connect failures in a row, then fails
fast without touching the network, lets exactly one probe through after DB_BREAKER_RESET_S,
and closes once the database answers again. /health/db shows each state."""

from __future__ import annotations

import asyncio
import time

from reliability_support import assert_unavailable, build_app, make_settings, serve

from neondb.proxy import FaultProxy

FAILURES = 3
RESET_S = 1.0
CONNECT_TIMEOUT_S = 2.0  # libpq's minimum; a stalled connect costs this much
FAST_S = 0.5  # "fail fast": well under the connect timeout


async def _settle() -> None:
    """Let the proxy thread and the drivers see a dropped socket."""
    await asyncio.sleep(0.1)


async def test_breaker_opens_fails_fast_probes_once_and_closes(
    fresh_db, proxy: FaultProxy, driver: str
) -> None:
    settings = make_settings(
        fresh_db.url(port=proxy.port),
        db_driver=driver,
        db_pool_min=1,
        db_pool_max=3,
        db_retry_attempts=1,  # one connect attempt per request: failures counted one by one
        db_breaker_failures=FAILURES,
        db_breaker_reset_s=RESET_S,
        db_connect_timeout_s=CONNECT_TIMEOUT_S,
    )
    async with serve(build_app(settings)) as client:
        db = client.db
        assert (await client.call("POST", "/api/tasks", json={"title": "before"})).status == 201
        health = await client.call("GET", "/health/db")
        assert health.status == 200
        assert health.body["breaker"]["state"] == "closed"

        # The database goes away: every pooled connection is cut, new ones are refused.
        proxy.mode = "refuse"
        proxy.drop_all()
        await _settle()

        # Closed: each request tries to connect once, fails, and counts one failure.
        for n in range(1, FAILURES + 1):
            before = proxy.accepted
            o = await client.call("GET", "/api/tasks")
            assert_unavailable(o)
            assert proxy.accepted == before + 1
            assert db.breaker.consecutive_failures == n
        assert db.breaker.state == "open"
        health = await client.call("GET", "/health/db")
        assert health.status == 503
        assert health.retry_after is not None
        assert health.body["database"] == "circuit open"
        assert health.body["breaker"]["state"] == "open"
        assert 0 < health.body["breaker"]["retry_after_s"] <= RESET_S

        # Open: fail fast. A stalled database would hold each attempt for the connect
        # timeout; no request makes one.
        proxy.mode = "stall"
        before = proxy.accepted
        for method, path, body in [
            ("GET", "/api/tasks", None),
            ("POST", "/api/tasks", {"title": "during"}),
            ("GET", "/api/tasks", None),
        ]:
            o = await client.call(method, path, json=body, bound_s=CONNECT_TIMEOUT_S)
            assert_unavailable(o)
            assert o.elapsed_s < FAST_S, o
            assert int(o.retry_after or 0) <= RESET_S + 1
        assert proxy.accepted == before  # not one connection attempt
        assert db.breaker.state == "open"

        # Half-open, database still stalled: one probe goes out (and waits for the connect
        # timeout); requests meanwhile fail fast without an attempt; the probe's failure
        # opens the circuit again.
        await asyncio.sleep(db.breaker.remaining_s() + 0.05)
        assert db.breaker.state == "half_open"
        before = proxy.accepted
        probe = asyncio.create_task(client.call("GET", "/api/tasks", bound_s=4 * CONNECT_TIMEOUT_S))
        await asyncio.sleep(0.2)
        others = await asyncio.gather(
            *(client.call("GET", "/api/tasks", bound_s=CONNECT_TIMEOUT_S) for _ in range(4))
        )
        for o in others:
            assert_unavailable(o)
            assert o.elapsed_s < FAST_S, o
        probed = await probe
        assert_unavailable(probed)
        assert probed.elapsed_s < CONNECT_TIMEOUT_S + 1, probed  # one connect timeout
        assert proxy.accepted == before + 1  # exactly one probe
        assert db.breaker.state == "open"

        # The database is back: after the cool-down the probe succeeds and closes the circuit.
        proxy.mode = "pass"
        await asyncio.sleep(db.breaker.remaining_s() + 0.05)
        started = time.monotonic()
        o = await client.call("GET", "/api/tasks")
        assert o.status == 200, o
        assert [t["title"] for t in o.body["items"]] == ["before"]
        assert time.monotonic() - started < CONNECT_TIMEOUT_S
        assert db.breaker.state == "closed"
        assert db.breaker.consecutive_failures == 0
        health = await client.call("GET", "/health/db")
        assert health.status == 200
        assert health.body["breaker"] == {
            "state": "closed",
            "consecutive_failures": 0,
            "retry_after_s": 0.0,
        }
        assert (await client.call("POST", "/api/tasks", json={"title": "after"})).status == 201
