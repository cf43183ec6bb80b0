"""pytest plugin: real PostgreSQL for tests, isolated per test.

Loaded automatically (entry point `pytest11`). Fixtures:

* `neondb_server_url` (session): `TEST_DATABASE_URL` when set, else an embedded server in a
  temporary folder.
* `neondb_database_url` (session): a fresh database on that server, dropped at the end.
* `neondb_schema_url` (function): a fresh schema in that database, made the connections'
  `search_path` through the URL's `options`, dropped after the test: tests never see each
  other's rows, and may commit freely.

`admin_execute(url, sql)` runs one statement with autocommit (CREATE DATABASE and the like).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from neondb.embedded import EmbeddedServer
from neondb.extras import installed
from neondb.url import parse_url

__all__ = ["admin_execute", "with_search_path"]


def admin_execute(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on `url` with autocommit; return its rows. Uses psycopg (sync)
    when installed, else asyncpg on a private event loop (the caller may be inside one).
    `params` are psycopg-style (`%s`) with psycopg and asyncpg-style (`$1`) with asyncpg."""
    parsed = parse_url(url)
    if installed("psycopg"):
        import psycopg

        conninfo = parsed.spec("psycopg", connect_timeout_s=10).kwargs["conninfo"]
        with psycopg.connect(conninfo, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    async def run() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(**parsed.spec("asyncpg", connect_timeout_s=10).kwargs)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *(params or ()))]
        finally:
            await conn.close()

    # A thread of its own: asyncio.run() cannot nest inside a running loop.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def with_search_path(url: str, schema: str) -> str:
    """`url` whose connections start with `search_path` = `schema` (startup `options`)."""
    parsed = parse_url(url).url
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def _with_database(url: str, name: str) -> str:
    return parse_url(url).url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def neondb_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedServer(Path(tmp_path_factory.mktemp("neondb-embedded")))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def neondb_database_url(neondb_server_url: str) -> Iterator[str]:
    name = f"neondb_test_{uuid.uuid4().hex[:10]}"
    admin_execute(neondb_server_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(neondb_server_url, name)
    finally:
        admin_execute(neondb_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def neondb_schema_url(neondb_database_url: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin_execute(neondb_database_url, f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(neondb_database_url, schema)
    finally:
        admin_execute(neondb_database_url, f'DROP SCHEMA "{schema}" CASCADE')
