"""neondb.fastapi: the session dependencies (committed before the response), the error
handlers (503/504 with Retry-After and a one-line detail), pool stats and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Header, HTTPException
from neondb_support import make_settings
from sqlalchemy import text

from neondb import AutocommitSession, DbSession, NeonDB, ReadSession
from neondb.testing import admin_execute


def build_app(url: str, driver: str) -> tuple[FastAPI, NeonDB]:
    neon = NeonDB(
        make_settings(
            url,
            db_driver=driver,
            db_pool_max=2,
            db_pool_timeout_s=0.3,
            db_statement_timeout_s=0.5,
            db_breaker_reset_s=30,
        ),
        name=f"api-{driver}",
    )
    app = FastAPI(lifespan=neon.lifespan)

    async def admin(x_admin: str | None = Header(default=None)) -> None:
        if x_admin != "yes":
            raise HTTPException(403, "admins only")

    neon.install(app, admin=admin)

    @app.post("/notes", status_code=201)
    async def create(body: str, session: DbSession) -> dict[str, int]:
        row = await session.execute(
            text("INSERT INTO notes (body) VALUES (:b) RETURNING id"), {"b": body}
        )
        return {"id": row.scalar_one()}

    @app.post("/notes/fail")
    async def create_then_fail(body: str, session: DbSession) -> None:
        await session.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": body})
        raise HTTPException(409, "changed my mind")

    @app.post("/notes/quick", status_code=201)
    async def create_quick(body: str, session: AutocommitSession) -> dict[str, int]:
        row = await session.execute(
            text("INSERT INTO notes (body) VALUES (:b) RETURNING id"), {"b": body}
        )
        return {"id": row.scalar_one()}

    @app.get("/notes")
    async def list_notes(session: ReadSession) -> list[str]:
        return list((await session.scalars(text("SELECT body FROM notes ORDER BY id"))).all())

    @app.get("/slow")
    async def slow(session: ReadSession) -> None:
        await session.execute(text("SELECT pg_sleep(3)"))

    return app, neon


@pytest.fixture
async def api(
    neondb_schema_url: str, driver: str
) -> AsyncIterator[tuple[httpx.AsyncClient, NeonDB, str]]:
    admin_execute(neondb_schema_url, "CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    app, neon = build_app(neondb_schema_url, driver)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        yield client, neon, neondb_schema_url


async def test_db_session_is_committed_before_the_response(
    api: tuple[httpx.AsyncClient, NeonDB, str],
) -> None:
    client, _, url = api
    r = await client.post("/notes", params={"body": "a"})
    assert r.status_code == 201
    # Another connection sees it the moment the response has arrived.
    assert admin_execute(url, "SELECT id, body FROM notes") == [(r.json()["id"], "a")]
    r = await client.post("/notes/quick", params={"body": "b"})
    assert r.status_code == 201
    assert (await client.get("/notes")).json() == ["a", "b"]


async def test_db_session_rolls_back_when_the_route_fails(
    api: tuple[httpx.AsyncClient, NeonDB, str],
) -> None:
    client, neon, url = api
    r = await client.post("/notes/fail", params={"body": "x"})
    assert r.status_code == 409
    assert admin_execute(url, "SELECT count(*) FROM notes") == [(0,)]
    assert neon.db.pool_stats()["primary"]["checked_out"] == 0


async def test_statement_timeout_is_a_504(api: tuple[httpx.AsyncClient, NeonDB, str]) -> None:
    client, _, _ = api
    r = await client.get("/slow")
    assert r.status_code == 504
    assert r.json() == {"detail": "database statement timed out"}
    assert r.headers["Retry-After"] == "1"


async def test_pool_exhaustion_is_a_503(api: tuple[httpx.AsyncClient, NeonDB, str]) -> None:
    client, neon, _ = api
    async with neon.db.read_session() as a, neon.db.read_session() as b:
        await a.execute(text("SELECT 1"))
        await b.execute(text("SELECT 1"))
        r = await client.get("/notes")
    assert r.status_code == 503
    assert r.json() == {"detail": "database busy, retry later"}
    assert r.headers["Retry-After"] == "1"
    assert (await client.get("/notes")).status_code == 200


async def test_open_circuit_is_a_503_with_the_cool_down(
    api: tuple[httpx.AsyncClient, NeonDB, str],
) -> None:
    client, neon, _ = api
    for _ in range(neon.settings.db_breaker_failures):
        neon.db.breaker.record_failure()
    r = await client.get("/notes")
    assert r.status_code == 503
    assert r.json() == {"detail": "database unavailable, retry later"}
    assert 28 <= int(r.headers["Retry-After"]) <= 30
    r = await client.get("/health/db")
    assert r.status_code == 503
    assert r.json()["database"] == "circuit open"
    neon.db.breaker.reset()
    assert (await client.get("/notes")).status_code == 200


async def test_pool_stats_for_admins_only(
    api: tuple[httpx.AsyncClient, NeonDB, str], driver: str
) -> None:
    client, _, _ = api
    assert (await client.get("/admin/db/pool-stats")).status_code == 403
    r = await client.get("/admin/db/pool-stats", headers={"X-Admin": "yes"})
    assert r.status_code == 200
    body = r.json()
    assert body["pools"]["primary"]["max"] == 2
    assert body["breaker"] == {"state": "closed", "consecutive_failures": 0}
    assert body["driver"] == driver
    assert body["behind_pooler"] is False
    assert body["connections_opened"] >= 1


async def test_metrics(api: tuple[httpx.AsyncClient, NeonDB, str], driver: str) -> None:
    client, _, _ = api
    await client.get("/notes")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert f'neondb_pool_max{{db="api-{driver}",role="primary"}} 2.0' in r.text
    assert f'neondb_breaker_state{{db="api-{driver}"}} 0.0' in r.text
    assert f'neondb_statement_seconds_count{{db="api-{driver}",kind="read"}}' in r.text


async def test_routes_without_the_lifespan_say_what_is_missing() -> None:
    app = FastAPI()
    NeonDB(make_settings("postgresql://u@127.0.0.1:1/db")).install(app)

    @app.get("/x")
    async def x(session: ReadSession) -> None:
        pass

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RuntimeError, match="neondb is not installed"):
            await client.get("/x")
