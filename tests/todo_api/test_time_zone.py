"""Timestamps decode in UTC whatever the database's time zone, and an error raised while
decoding the result of a committed write is never reported as the client's bad input."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text

from neondb import AutocommitSession
from neondb.testing import admin_execute, with_search_path
from neondb.url import parse_url
from todo_api.app import create_app
from todo_api.testing import app_settings, auth_headers

ALICE = auth_headers("alice")
# UTC+14: 9999-12-31T23:30Z is 10000-01-01 13:30 there, a year Python cannot hold, which
# psycopg decodes timestamptz text into.
EAST = "Pacific/Kiritimati"


@pytest.fixture
def east_url(neondb_database_url: str) -> Iterator[str]:
    """A role whose sessions default to a time zone 14 hours east of UTC (as a database
    with `timezone = 'Pacific/Kiritimati'` would), with a schema of its own."""
    name = f"tz_{uuid.uuid4().hex[:10]}"
    admin_execute(neondb_database_url, f'CREATE ROLE "{name}" LOGIN')
    admin_execute(neondb_database_url, f"ALTER ROLE \"{name}\" SET TimeZone = '{EAST}'")
    admin_execute(neondb_database_url, f'CREATE SCHEMA "{name}" AUTHORIZATION "{name}"')
    url = parse_url(neondb_database_url).url.set(username=name)
    try:
        yield with_search_path(url.render_as_string(hide_password=False), name)
    finally:
        admin_execute(
            neondb_database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (name,),
        )
        admin_execute(neondb_database_url, f'DROP SCHEMA "{name}" CASCADE')
        admin_execute(neondb_database_url, f'DROP ROLE "{name}"')


async def started(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_next_occurrence_near_year_9999_in_a_zone_east_of_utc(
    east_url: str, driver: str
) -> None:
    app = create_app(app_settings(east_url, db_driver=driver))
    async for client in started(app):
        task = {
            "title": "last day",
            "due_date": "9998-12-31T23:30:00Z",
            "recurring": True,
            "recurring_pattern": "daily",
        }
        created = await client.post("/api/tasks", json=task, headers=ALICE)
        assert created.status_code == 201, created.text
        tid = created.json()["id"]
        # Where 364 completions of the daily series lead (the API takes years up to 9998).
        async with app.state.neondb.autocommit() as s:
            await s.execute(
                text("UPDATE tasks SET due_date = '9999-12-30 23:30+00' WHERE id = :id"),
                {"id": tid},
            )
        done = await client.post(f"/api/tasks/{tid}/complete", headers=ALICE)
        assert done.status_code == 200, done.text
        assert done.json()["next"]["due_date"] == "9999-12-31T23:30:00Z"
        page = await client.get("/api/tasks", headers=ALICE)
        assert page.status_code == 200, page.text
        dues = [t["due_date"] for t in page.json()["items"]]
        assert dues == ["9999-12-31T23:30:00Z", "9999-12-30T23:30:00Z"]
        async with app.state.neondb.read_session() as s:
            zone = (await s.execute(text("SELECT current_setting('TimeZone')"))).scalar_one()
        assert zone == "UTC"


async def test_a_result_that_cannot_be_decoded_after_a_commit_is_not_a_422(
    neondb_schema_url: str,
) -> None:
    """psycopg raises a DataError (no SQLSTATE: the server said nothing wrong) when a value
    it received cannot become a Python object; the autocommit write had committed."""
    app = create_app(app_settings(neondb_schema_url, db_driver="psycopg"))

    @app.post("/test/undecodable")
    async def undecodable(session: AutocommitSession) -> dict[str, Any]:
        stmt = text(
            "INSERT INTO conversations (user_id, title) VALUES ('alice', 'kept') "
            "RETURNING timestamp '10000-01-01 00:00:00' AS too_late"
        )
        return dict((await session.execute(stmt)).one()._mapping)

    async for client in started(app):
        r = await client.post("/test/undecodable")
        assert r.status_code == 500, r.text
        assert r.json() == {"detail": "Internal Server Error"}
        listed = await client.get("/api/conversations", headers=ALICE)
        assert [c["title"] for c in listed.json()["items"]] == ["kept"]


async def test_a_value_postgresql_refuses_is_still_a_422(neondb_schema_url: str) -> None:
    app = create_app(app_settings(neondb_schema_url, db_driver="psycopg"))

    @app.post("/test/refused")
    async def refused(session: AutocommitSession) -> None:
        await session.execute(text("SELECT 'not a number'::int"))

    async for client in started(app):
        r = await client.post("/test/refused")
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["msg"] == "value rejected by the database"


async def test_a_value_the_driver_refuses_to_send_is_a_422(neondb_schema_url: str) -> None:
    """psycopg refuses a NUL in text before sending anything: a DataError without SQLSTATE,
    like a decoding one, but raised before the statement ran, so the client's value."""
    app = create_app(app_settings(neondb_schema_url, db_driver="psycopg"))

    @app.post("/test/nul")
    async def nul(session: AutocommitSession) -> None:
        await session.execute(text("SELECT CAST(:v AS text)"), {"v": "a\x00b"})

    async for client in started(app):
        r = await client.post("/test/nul")
        assert r.status_code == 422, r.text
