"""Coming from the usual setup guide: an app written the way Neon + FastAPI guides show it
(`create_async_engine` with `pool_pre_ping`, a `get_session` dependency that commits,
`create_all` at start-up, SQLModel models with `add`/`commit`/`refresh`) moved onto neondb
with the few lines of README "Coming from the usual setup guide". It runs against a TLS +
SCRAM server with the Neon console's URL form, directly and behind PgBouncer in transaction
mode (TLS and SCRAM too), with both drivers. Round trips are counted by a FaultProxy in
front of the endpoint; the README's figures are these assertions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from guide_app import guide_app, neondb_app
from neondb_support import DRIVERS, TLS_DATABASE, TLS_PASSWORD, TLS_USER, TLSServer, make_settings
from reliability_servers import PgBouncer, start_pgbouncer_process

from neondb.proxy import FaultProxy
from neondb.testing import admin_execute

NEON_QUERY = "sslmode=require&channel_binding=require"


@pytest.fixture(scope="module")
def tls_pgbouncer(tls_server: TLSServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode, TLS and SCRAM on both sides, as Neon's -pooler."""
    bouncer = start_pgbouncer_process(
        tls_server.port, {TLS_USER: TLS_PASSWORD}, pool_size=4, tls_dir=tls_server.ca_file.parent
    )
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def clean_tables(tls_server: TLSServer) -> None:
    admin_execute(tls_server.url(f"sslrootcert={tls_server.ca_file}"), "DROP TABLE IF EXISTS hero")


def endpoint_url(port: int, tls_server: TLSServer, *, pooler: bool) -> str:
    """The Neon console's form. PgBouncer cannot do SCRAM channel binding (Neon's own
    proxy can), so the pooled URL asks for TLS without it."""
    query = "sslmode=require" if pooler else NEON_QUERY
    return (
        f"postgresql://{TLS_USER}:{TLS_PASSWORD}@localhost:{port}/{TLS_DATABASE}"
        f"?{query}&sslrootcert={tls_server.ca_file}"
    )


async def round_trips(proxy: FaultProxy, client: httpx.AsyncClient, *request: Any) -> int:
    proxy.reset_counts()
    response = await client.request(*request[:2], **(request[2] if len(request) > 2 else {}))
    assert response.status_code == 200, response.text
    return proxy.round_trips


async def exercise(app: FastAPI, proxy: FaultProxy) -> tuple[int, int]:
    """Create and read heroes; return the round trips of one create and one read, warm."""
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        # Warm up: past psycopg's prepare threshold (5) and asyncpg's statement cache.
        ids = []
        for i in range(6):
            r = await c.post("/heroes/", json={"name": f"hero-{i}", "age": 30 + i})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
            assert (await c.get(f"/heroes/{ids[-1]}")).json()["name"] == f"hero-{i}"
        assert [h["id"] for h in (await c.get("/heroes/")).json()] == ids
        assert (await c.get("/heroes/999999")).status_code == 404
        create = await round_trips(proxy, c, "POST", "/heroes/", {"json": {"name": "last"}})
        read = await round_trips(proxy, c, "GET", f"/heroes/{ids[0]}")
    return create, read


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("pooler", [False, True], ids=["direct", "pooler"])
@pytest.mark.usefixtures("clean_tables")
async def test_guide_app_on_neondb(
    tls_server: TLSServer, tls_pgbouncer: PgBouncer, driver: str, pooler: bool
) -> None:
    port = tls_pgbouncer.port if pooler else tls_server.port
    with FaultProxy("127.0.0.1", port) as proxy:
        url = endpoint_url(proxy.port, tls_server, pooler=pooler)
        settings = make_settings(
            url, db_driver=driver, db_pooler="transaction" if pooler else "none"
        )
        create, read = await exercise(neondb_app(settings), proxy)
    # DbSession for the guide's add/commit/refresh route: BEGIN, INSERT, COMMIT, then
    # refresh's BEGIN, SELECT, and the dependency's COMMIT. Behind the pooler, each
    # transaction also sends SET LOCAL statement_timeout on its own (asyncpg: prepare and
    # execute for each statement). ReadSession for reads: one round trip (asyncpg behind
    # the pooler: two, prepare and execute).
    expected_create = {
        (False, "asyncpg"): 6,
        (False, "psycopg"): 6,
        (True, "asyncpg"): 12,
        (True, "psycopg"): 8,
    }
    assert create == expected_create[pooler, driver]
    assert read == (2 if pooler and driver == "asyncpg" else 1)


@pytest.mark.usefixtures("clean_tables")
async def test_the_guide_app_itself(tls_server: TLSServer) -> None:
    """Before: with asyncpg the console URL does not even connect; with psycopg it works
    and costs this many round trips (pool_pre_ping, commit dependency, refresh)."""
    with FaultProxy("127.0.0.1", tls_server.port) as proxy:
        url = endpoint_url(proxy.port, tls_server, pooler=False)
        asyncpg_app = guide_app(url.replace("postgresql://", "postgresql+asyncpg://"))
        with pytest.raises(TypeError, match="sslmode"):
            async with LifespanManager(asyncpg_app):
                pass
        create, read = await exercise(
            guide_app(url.replace("postgresql://", "postgresql+psycopg://")), proxy
        )
    assert (create, read) == (8, 4)


@pytest.mark.usefixtures("clean_tables")
async def test_guide_reads_in_the_guides_session_cost_three(tls_server: TLSServer) -> None:
    """Changing only the setup lines (DbSession for reads too): BEGIN, SELECT, COMMIT."""
    with FaultProxy("127.0.0.1", tls_server.port) as proxy:
        url = endpoint_url(proxy.port, tls_server, pooler=False)
        app = neondb_app(make_settings(url, db_driver="psycopg"), read_session=False)
        create, read = await exercise(app, proxy)
    assert (create, read) == (6, 3)
