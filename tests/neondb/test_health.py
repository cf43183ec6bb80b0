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
        assert int(r.headers["Retry-After"]) >= 1
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
