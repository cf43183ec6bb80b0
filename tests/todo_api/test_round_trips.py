"""One database round trip per request (DESIGN.md principle 3), counted by a proxy between
the app and PostgreSQL, once the connection and its statement cache are warm."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import make_url

from neondb.proxy import FaultProxy
from todo_api.app import create_app
from todo_api.testing import app_settings, auth_headers, make_client

ALICE = auth_headers("alice")


@pytest.fixture
async def counted(neondb_schema_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, FaultProxy]]:
    u = make_url(neondb_schema_url)
    host = str(u.query.get("host") or u.host)
    port = int(str(u.query.get("port") or u.port or 5432))
    query = {k: v for k, v in u.query.items() if k not in ("host", "port")}
    with FaultProxy(host, port) as proxy:
        url = u.set(host="127.0.0.1", port=proxy.port, query=query)
        # One pooled connection, so every request finds the statements already prepared.
        settings = app_settings(
            url.render_as_string(hide_password=False), db_pool_min=1, db_pool_max=1
        )
        app = create_app(settings)
        async with LifespanManager(app), make_client(app) as client:
            yield client, proxy


async def trips(proxy: FaultProxy, call: Callable[[], Awaitable[httpx.Response]]) -> int:
    """Round trips of `call` once warm (the first two runs prepare its statements)."""
    for _ in range(2):
        (await call()).raise_for_status()
    proxy.reset_counts()
    (await call()).raise_for_status()
    return proxy.round_trips


async def test_one_round_trip_per_request(counted: tuple[httpx.AsyncClient, FaultProxy]) -> None:
    client, proxy = counted

    async def new_task(**body: Any) -> Any:
        r = await client.post("/api/tasks", json={"title": "t", **body}, headers=ALICE)
        return r.json()

    task = await new_task()
    conv = (await client.post("/api/conversations", json={}, headers=ALICE)).json()
    recurring = {
        "due_date": "2025-01-31T00:00:00Z",
        "recurring": True,
        "recurring_pattern": "daily",
    }
    pending = [(await new_task(**recurring))["id"] for _ in range(3)]
    doomed = [(await new_task())["id"] for _ in range(3)]
    doomed_convs = [
        (await client.post("/api/conversations", json={}, headers=ALICE)).json()["id"]
        for _ in range(3)
    ]
    msg = {"role": "user", "content": "hi"}

    cases: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
        "create task": lambda: client.post("/api/tasks", json={"title": "x"}, headers=ALICE),
        "list tasks": lambda: client.get("/api/tasks?status=pending&q=t", headers=ALICE),
        "get task": lambda: client.get(f"/api/tasks/{task['id']}", headers=ALICE),
        "patch task": lambda: client.patch(
            f"/api/tasks/{task['id']}", json={"title": "y"}, headers=ALICE
        ),
        "complete recurring": lambda: client.post(
            f"/api/tasks/{pending.pop()}/complete", headers=ALICE
        ),
        "delete task": lambda: client.delete(f"/api/tasks/{doomed.pop()}", headers=ALICE),
        "create conversation": lambda: client.post("/api/conversations", json={}, headers=ALICE),
        "list conversations": lambda: client.get("/api/conversations", headers=ALICE),
        "get conversation": lambda: client.get(f"/api/conversations/{conv['id']}", headers=ALICE),
        "post message": lambda: client.post(
            f"/api/conversations/{conv['id']}/messages", json=msg, headers=ALICE
        ),
        "list messages": lambda: client.get(
            f"/api/conversations/{conv['id']}/messages", headers=ALICE
        ),
        "delete conversation": lambda: client.delete(
            f"/api/conversations/{doomed_convs.pop()}", headers=ALICE
        ),
    }
    counts = {name: await trips(proxy, call) for name, call in cases.items()}
    assert counts == dict.fromkeys(cases, 1)


async def test_no_round_trip_for_a_rejected_request(
    counted: tuple[httpx.AsyncClient, FaultProxy],
) -> None:
    client, proxy = counted
    proxy.reset_counts()
    assert (await client.get("/api/tasks")).status_code == 401
    assert (await client.post("/api/tasks", json={"title": ""}, headers=ALICE)).status_code == 422
    assert (await client.get("/api/tasks/0", headers=ALICE)).status_code == 422
    assert proxy.round_trips == 0
