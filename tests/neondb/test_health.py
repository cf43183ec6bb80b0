"""neondb.health and the health routes: `/health/db` is 200 with a live database and a real
503 (JSON `status: unhealthy`, `Retry-After`) without one; `/health` needs no database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from neondb_support import cut, make_settings, proxied_url

from neondb import NeonDB, database_health
from neondb.proxy import FaultProxy


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        yield c


def app_for(url: str, driver: str, **overrides: object) -> FastAPI:
    neon = NeonDB(make_settings(url, db_driver=driver, db_connect_timeout_s=1, **overrides))
    app = FastAPI(lifespan=neon.lifespan)
    neon.install(app)
    return app


async def test_health_db_is_200_with_a_live_database(neondb_database_url: str, driver: str) -> None:
    async with serve(app_for(neondb_database_url, driver)) as client:
        r = await client.get("/health/db")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "healthy"
        assert body["database"] == "connected"
        assert body["latency_ms"] >= 0
        assert body["driver"] == driver
        assert body["breaker"]["state"] == "closed"
        assert body["pool"]["primary"]["checked_out"] == 0
        assert "Retry-After" not in r.headers
        assert (await client.get("/health")).json() == {"status": "ok"}


@pytest.mark.parametrize("outage", ["refuse", "stall"])
async def test_health_db_is_503_when_the_database_is_gone(
    proxy: FaultProxy, neondb_database_url: str, driver: str, outage: str
) -> None:
    app = app_for(proxied_url(proxy, neondb_database_url), driver, db_retry_attempts=1)
    async with serve(app) as client:
        assert (await client.get("/health/db")).status_code == 200

        proxy.mode = outage  # type: ignore[assignment]
        await cut(proxy)
        started = time.monotonic()
        r = await client.get("/health/db")
        assert time.monotonic() - started < 6  # bounded by the connect timeout
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/json"
        assert r.headers["Retry-After"] == "2"  # the floor: the circuit is still closed
        body = r.json()
        assert body["status"] == "unhealthy"
        assert body["database"] in ("unreachable", "timeout")
        assert "password" not in r.text

        # Liveness does not touch the database.
        r = await client.get("/health")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})

        proxy.mode = "pass"  # back: healthy again, no restart needed
        r = await client.get("/health/db")
        assert (r.status_code, r.json()["status"]) == (200, "healthy")


async def test_health_without_a_database() -> None:
    neon = NeonDB(make_settings("postgresql://u:pw@127.0.0.1:1/db"))
    app = FastAPI()  # no lifespan: the database is never started
    neon.install(app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        r = await client.get("/health")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_database_health_never_raises_for_an_outage(
    proxy: FaultProxy, neondb_database_url: str
) -> None:
    neon = NeonDB(make_settings(proxied_url(proxy, neondb_database_url), db_retry_attempts=1))
    await neon.db.start()
    try:
        assert (await database_health(neon.db))["status"] == "healthy"
        proxy.mode = "stall"
        await cut(proxy)
        body = await database_health(neon.db, timeout_s=0.3)
        assert body["status"] == "unhealthy"
        assert body["database"] == "timeout"
    finally:
        await neon.db.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("reset_s", "elapsed_s", "retry_after"),
    [
        (30.0, 0.0, "30"),  # the whole cool-down
        (30.0, 22.6, "8"),  # what is left, rounded up
        (7.2, 0.0, "8"),
        (30.0, 29.5, "2"),  # never under 2
        (1.0, 0.0, "2"),
    ],
)
async def test_health_db_retry_after_is_the_cool_down_left(
    neondb_database_url: str, reset_s: float, elapsed_s: float, retry_after: str
) -> None:
    app = app_for(neondb_database_url, "asyncpg", db_breaker_reset_s=reset_s)
    async with serve(app) as client:
        db = app.state.neondb
        clock = Clock()
        db.breaker.clock = clock  # a fixed clock: the cool-down left is exact
        for _ in range(db.settings.db_breaker_failures):
            db.breaker.record_failure()
        clock.now += elapsed_s
        assert db.breaker.state == "open"
        r = await client.get("/health/db")
        assert r.status_code == 503
        assert r.json()["database"] == "circuit open"
        assert r.json()["breaker"]["retry_after_s"] == pytest.approx(reset_s - elapsed_s)
        assert r.headers["Retry-After"] == retry_after
        # Cool-down over: the check goes through again (the database was there all along).
        clock.now += reset_s + 0.01
        assert db.breaker.state == "half_open"
        r = await client.get("/health/db")
        assert r.status_code == 200
        assert "Retry-After" not in r.headers


async def test_database_health_never_raises(neondb_database_url: str) -> None:
    """Whatever goes wrong (here: the database was never started), the answer is
    'unhealthy', for the route to turn into a 503."""
    neon = NeonDB(make_settings(neondb_database_url))
    body = await database_health(neon.db)
    assert body["status"] == "unhealthy"
    assert body["database"] == "unreachable"
    assert body["breaker"]["state"] == "closed"
    assert body["pool"] == {}

    app = FastAPI()
    app.state.neondb = neon.db  # installed, but not started
    neon.install(app)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/health/db")
    assert r.status_code == 503
    assert r.json()["status"] == "unhealthy"
    assert r.headers["Retry-After"] == "2"
