"""neondb.testing, the pytest plugin: a database per session, a schema per test."""

from __future__ import annotations

import pytest
from neondb_support import open_database
from sqlalchemy import text

from neondb.testing import admin_execute, with_search_path
from neondb.url import parse_url

seen_schemas: list[str] = []


def schema_of(url: str) -> str:
    options = parse_url(url).param("options") or ""
    assert options.startswith("-csearch_path=")
    return options.removeprefix("-csearch_path=")


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_gets_a_fresh_schema(neondb_schema_url: str, run: int) -> None:
    schema = schema_of(neondb_schema_url)
    assert schema not in seen_schemas
    # The schemas of earlier tests are gone with their tables.
    gone = "SELECT count(*) FROM pg_namespace WHERE nspname = ANY(%s)"
    assert admin_execute(neondb_schema_url, gone, (seen_schemas,)) == [(0,)]
    seen_schemas.append(schema)
    async with open_database(neondb_schema_url) as db:
        async with db.read_session() as s:
            # Created by an earlier run, this table would be visible here.
            visible = await s.execute(text("SELECT to_regclass('probe') IS NOT NULL"))
            assert visible.scalar() is False
        async with db.autocommit() as s:
            await s.execute(text("CREATE TABLE probe (n int)"))
            await s.execute(text("INSERT INTO probe VALUES (:n)"), {"n": run})
            assert (await s.execute(text("SELECT current_schema()"))).scalar() == schema
    assert admin_execute(neondb_schema_url, "SELECT n FROM probe") == [(run,)]


def test_session_database_is_a_fresh_one(neondb_database_url: str, neondb_server_url: str) -> None:
    name = parse_url(neondb_database_url).url.database
    assert name is not None
    assert name.startswith("neondb_test_")
    assert parse_url(neondb_server_url).url.database != name
    assert admin_execute(neondb_database_url, "SELECT current_database()") == [(name,)]


def test_admin_execute_and_with_search_path(neondb_database_url: str) -> None:
    assert admin_execute(neondb_database_url, "SELECT %s::int + 1", (41,)) == [(42,)]
    assert admin_execute(neondb_database_url, "CREATE TEMP TABLE x (n int)") == []
    url = with_search_path(neondb_database_url, "somewhere")
    assert schema_of(url) == "somewhere"
    assert parse_url(url).url.database == parse_url(neondb_database_url).url.database
