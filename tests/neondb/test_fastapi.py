"""neondb.fastapi: the session dependencies (committed before the response), the error
handlers (503/504 with Retry-After and a one-line detail), pool stats and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Header, HTTPException, Request
from neondb_support import (
    Item,
    add_slow_commit_trigger,
    connections_of,
    make_settings,
    role_of,
    terminate_during_commit,
    wait_until,
)
from sqlalchemy import text

from neondb import AutocommitSession, DbSession, NeonDB, ReadSession, get_database
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
    assert f'neondb_breaker_state{{db="api-{driver}",role="primary"}} 0.0' in r.text
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


# errors of every kind become 503/504, not 500 ---------------------------------------------------


def item_app(url: str, driver: str, **overrides: Any) -> tuple[FastAPI, NeonDB]:
    """Routes on an ORM model whose session methods (get, add + flush, commit) are not
    NeonSession's wrapped ones, and routes on the raw engine."""
    neon = NeonDB(make_settings(url, db_driver=driver, **overrides), name=f"items-{driver}")
    app = FastAPI(lifespan=neon.lifespan)
    neon.install(app)

    @app.get("/items/{item_id}")
    async def get_item(item_id: int, session: ReadSession) -> dict[str, Any]:
        item = await session.get(Item, item_id)
        if item is None:
            raise HTTPException(404, "no such item")
        return {"id": item.id, "name": item.name}

    @app.post("/items", status_code=201)
    async def add_item(name: str, session: AutocommitSession) -> None:
        session.add(Item(name=name))  # flushed (one INSERT) when the dependency exits

    @app.post("/items/tx", status_code=201)
    async def add_item_tx(name: str, session: DbSession) -> None:
        session.add(Item(name=name))  # flushed and committed when the dependency exits

    @app.get("/raw/sleep")
    async def raw_sleep(request: Request) -> None:
        async with get_database(request).engine.connect() as conn:
            await conn.exec_driver_sql("SELECT pg_sleep(3)")

    @app.get("/raw/terminated")
    async def raw_terminated(request: Request) -> None:
        async with get_database(request).engine.connect() as conn:
            await conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")

    @app.post("/raw/duplicate")
    async def raw_duplicate(request: Request) -> None:
        async with get_database(request).engine.begin() as conn:
            for _ in range(2):
                await conn.exec_driver_sql("INSERT INTO items (id, name) VALUES (1, 'x')")

    return app, neon


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan around an httpx client; an exception the app lets out is a 500
    (as a server would answer), not raised into the test."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        yield client


def assert_503(r: httpx.Response, detail: str = "database unavailable, retry later") -> None:
    assert r.status_code == 503, r.text
    assert r.json() == {"detail": detail}
    assert int(r.headers["Retry-After"]) >= 1


async def test_refused_login_while_serving_is_a_503(
    own_role: str, neondb_database_url: str, driver: str
) -> None:
    """The role is made NOLOGIN and its pooled connections are terminated (a rotated
    password, a disabled role): requests answer 503, not 500, and the health check says so;
    once the role may log in again, the app serves without a restart."""
    role = role_of(own_role)
    neon = NeonDB(make_settings(own_role, db_driver=driver, db_pool_min=2), name=f"r-{driver}")
    app = FastAPI(lifespan=neon.lifespan)
    neon.install(app)

    @app.get("/one")
    async def one(session: ReadSession) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    async with serving(app) as client:
        assert (await client.get("/one")).json() == 1
        admin_execute(neondb_database_url, f'ALTER ROLE "{role}" NOLOGIN')
        admin_execute(
            neondb_database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )
        await wait_until(lambda: connections_of(neondb_database_url, role=role) == 0)
        await asyncio.sleep(0.1)  # the goodbyes reach the idle pooled connections

        started = time.monotonic()
        r = await client.get("/one")
        assert_503(r)
        assert time.monotonic() - started < 2  # refused at once: not retried
        assert "log in" not in r.text  # the cause is for the log, not the client
        r = await client.get("/health/db")
        assert r.status_code == 503
        assert r.json()["status"] == "unhealthy"
        assert r.json()["database"] == "unreachable"
        assert r.headers["Retry-After"] == "2"
        # A refused login is not an outage: the breaker stays closed.
        assert neon.db.breaker.state == "closed"

        admin_execute(neondb_database_url, f'ALTER ROLE "{role}" LOGIN')
        assert (await client.get("/one")).json() == 1
        assert (await client.get("/health/db")).status_code == 200


async def test_pool_exhaustion_in_get_and_flush_is_a_503(
    neondb_schema_url: str, driver: str
) -> None:
    admin_execute(neondb_schema_url, "CREATE TABLE items (id serial PRIMARY KEY, name text)")
    app, neon = item_app(neondb_schema_url, driver, db_pool_max=1, db_pool_timeout_s=0.5)
    async with serving(app) as client:
        async with neon.db.read_session() as held:
            await held.execute(text("SELECT 1"))  # the only connection, held
            started = time.monotonic()
            r = await client.get("/items/1")  # session.get()
            assert time.monotonic() - started >= 0.45  # waited DB_POOL_TIMEOUT_S
            assert_503(r, "database busy, retry later")
            assert r.headers["Retry-After"] == "1"
            r = await client.post("/items", params={"name": "a"})  # add(), flushed on exit
            assert_503(r, "database busy, retry later")
            assert r.headers["Retry-After"] == "1"
        assert admin_execute(neondb_schema_url, "SELECT count(*) FROM items") == [(0,)]
        # Released: the same routes work.
        assert (await client.post("/items", params={"name": "b"})).status_code == 201
        (item_id,) = admin_execute(neondb_schema_url, "SELECT id FROM items")[0]
        r = await client.get(f"/items/{item_id}")
        assert (r.status_code, r.json()) == (200, {"id": item_id, "name": "b"})
        assert neon.db.pool_stats()["primary"]["checked_out"] == 0


async def test_connection_lost_during_commit_is_a_503(neondb_schema_url: str, driver: str) -> None:
    admin_execute(neondb_schema_url, "CREATE TABLE items (id serial PRIMARY KEY, name text)")
    add_slow_commit_trigger(neondb_schema_url, "items")
    app, neon = item_app(neondb_schema_url, driver, db_statement_timeout_s=10)
    async with serving(app) as client:
        killer = asyncio.create_task(terminate_during_commit(neondb_schema_url))
        r = await client.post("/items/tx", params={"name": "maybe"})
        await killer
        assert_503(r, "database connection lost during a write; its outcome is unknown")
        # It may or may not have committed; the client was told exactly that.
        assert admin_execute(neondb_schema_url, "SELECT count(*) FROM items")[0][0] in (0, 1)
        assert neon.db.pool_stats()["primary"]["checked_out"] == 0


async def test_errors_from_the_raw_engine_are_mapped_too(
    neondb_schema_url: str, driver: str
) -> None:
    """A route that uses the engine itself (no neondb session): an outage or a timeout is
    still a 503/504; the caller's own error stays a 500."""
    admin_execute(neondb_schema_url, "CREATE TABLE items (id serial PRIMARY KEY, name text)")
    app, _ = item_app(neondb_schema_url, driver, db_statement_timeout_s=0.5)
    async with serving(app) as client:
        r = await client.get("/raw/sleep")
        assert r.status_code == 504
        assert r.json() == {"detail": "database statement timed out"}
        assert r.headers["Retry-After"] == "1"
        assert_503(await client.get("/raw/terminated"))
        r = await client.post("/raw/duplicate")
        assert r.status_code == 500  # a unique violation is a bug, not an outage
        assert admin_execute(neondb_schema_url, "SELECT count(*) FROM items") == [(0,)]
