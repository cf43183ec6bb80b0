"""One user cannot slow everyone (issue 8, item 3).

A user with 50,000 tasks: `q` is served by the pg_trgm indexes (EXPLAIN), a page counts
at most 10,001 matches (EXPLAIN ANALYZE), and while that user runs 20 searches at once,
another user's requests all succeed and stay fast, because one user holds at most
`APP_USER_MAX_CONCURRENCY` pooled connections; the excess waits briefly, then gets 429.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text

from neondb import Database
from neondb.fairness import KeyedLimiter
from todo_api.app import create_app
from todo_api.settings import AppSettings
from todo_api.tasks import TOTAL_CAP, TaskFilters, list_statement
from todo_api.testing import app_settings, auth_headers, make_client

HEAVY = auth_headers("heavy")
LIGHT = auth_headers("light")
HEAVY_TASKS = 50_000
SHARE = 2  # the heavy user's share of an 8-connection pool
SEARCHERS = 20
SEARCHES_EACH = 5
LIGHT_REQUESTS = 25


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


async def explain(db: Database, stmt: Any, *options: str) -> list[dict[str, Any]]:
    """The plan of the statement the route sends, with its parameters bound."""
    async with db.engine.connect() as conn:
        compiled = stmt.compile(dialect=conn.dialect)
        params: Any = compiled.construct_params()
        if compiled.positiontup is not None:  # asyncpg: $1, $2...
            params = tuple(params[name] for name in compiled.positiontup)
        how = ", ".join(("FORMAT JSON", *options))
        result = await conn.exec_driver_sql(f"EXPLAIN ({how}) {compiled}", params)
        plan = result.scalar_one()
    return list(plan_nodes(plan[0]["Plan"]))


@pytest.fixture
async def heavy_app(neondb_schema_url: str) -> AsyncIterator[FastAPI]:
    settings = app_settings(
        neondb_schema_url,
        db_pool_min=2,
        db_pool_max=8,
        app_user_max_concurrency=SHARE,
        app_user_queue_timeout_s=0.05,
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=30):
        db: Database = app.state.neondb
        async with db.autocommit() as s:
            await s.execute(
                text(
                    "INSERT INTO tasks (user_id, title, description, created_at) "
                    "SELECT 'heavy', 'errand ' || g, "
                    "CASE WHEN g % 2 = 0 THEN 'note on item ' || g END, "
                    "now() - make_interval(secs => g) "
                    "FROM generate_series(1, :n) AS g"
                ),
                {"n": HEAVY_TASKS},
            )
            # What autovacuum does soon after such a load: the planner sees the real sizes.
            await s.execute(text("ANALYZE tasks"))
        yield app


@pytest.fixture
async def heavy_client(heavy_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(heavy_app) as c:
        yield c


async def test_q_search_of_the_heavy_user_uses_the_trigram_indexes(heavy_app: FastAPI) -> None:
    db: Database = heavy_app.state.neondb
    stmt = list_statement("heavy", TaskFilters(q="no such errand"), 20, 0)
    nodes = await explain(db, stmt)
    used = {n.get("Index Name") for n in nodes}
    assert {"ix_tasks_title_trgm", "ix_tasks_description_trgm"} <= used, used
    assert not any(n["Node Type"] == "Seq Scan" for n in nodes), nodes


async def test_a_page_counts_at_most_cap_plus_one_rows(heavy_app: FastAPI) -> None:
    db: Database = heavy_app.state.neondb
    for filters in (TaskFilters(), TaskFilters(q="errand")):
        nodes = await explain(db, list_statement("heavy", filters, 1, 0), "ANALYZE")
        most = max(n["Actual Rows"] * n.get("Actual Loops", 1) for n in nodes)
        assert most <= TOTAL_CAP + 1, (filters, most)


async def test_total_is_capped_and_says_so(heavy_client: httpx.AsyncClient) -> None:
    page = (await heavy_client.get("/api/tasks?limit=1", headers=HEAVY)).json()
    assert page["total"] == TOTAL_CAP
    assert page["total_capped"] is True
    assert [t["title"] for t in page["items"]] == ["errand 1"]  # newest first
    past = (await heavy_client.get("/api/tasks?limit=1&offset=60000", headers=HEAVY)).json()
    assert past == {"items": [], "total": TOTAL_CAP, "total_capped": True}
    # Under the cap the count is exact and the page keeps its plain shape.
    few = (await heavy_client.get("/api/tasks?q=errand 4999&limit=2", headers=HEAVY)).json()
    assert set(few) == {"items", "total"}
    assert few["total"] == 11  # errand 4999 and errand 49990 ... 49999
    assert len(few["items"]) == 2
    none = (await heavy_client.get("/api/tasks?q=zzz", headers=HEAVY)).json()
    assert none == {"items": [], "total": 0}


async def test_another_user_is_served_while_the_heavy_user_searches(
    heavy_app: FastAPI, heavy_client: httpx.AsyncClient
) -> None:
    client = heavy_client
    for n in range(3):
        r = await client.post("/api/tasks", json={"title": f"light {n}"}, headers=LIGHT)
        assert r.status_code == 201
    limiter: KeyedLimiter = heavy_app.state.user_limiter
    heavy_statuses: list[int] = []
    peak = 0
    searching = True

    async def searcher(n: int) -> None:
        nonlocal peak
        for i in range(SEARCHES_EACH):
            # No match at all, and matching every one of the user's tasks.
            q = "no such errand" if (n + i) % 2 else "errand"
            r = await client.get(f"/api/tasks?q={q}&limit=20", headers=HEAVY)
            heavy_statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.headers["Retry-After"] == "1"
            peak = max(peak, limiter.active("heavy"))

    async def watcher() -> None:
        nonlocal peak
        while searching:
            peak = max(peak, limiter.active("heavy"))
            await asyncio.sleep(0.001)

    watch = asyncio.create_task(watcher())
    searches = [asyncio.create_task(searcher(n)) for n in range(SEARCHERS)]
    await asyncio.sleep(0)  # the searchers are in flight before the first light request
    light_statuses: list[int] = []
    light_ms: list[float] = []
    for _ in range(LIGHT_REQUESTS):
        started = time.perf_counter()
        r = await client.get("/api/tasks?limit=5", headers=LIGHT)
        light_ms.append((time.perf_counter() - started) * 1000)
        light_statuses.append(r.status_code)
        assert r.json()["total"] == 3
    await asyncio.gather(*searches)
    searching = False
    await watch

    assert light_statuses == [200] * LIGHT_REQUESTS
    assert len(heavy_statuses) == SEARCHERS * SEARCHES_EACH
    assert set(heavy_statuses) <= {200, 429}, heavy_statuses
    assert heavy_statuses.count(200) >= SHARE  # the first arrivals always get a slot
    assert 1 <= peak <= SHARE
    assert len(limiter) == 0  # nobody holds or waits: no key is kept
    # A generous bound for a shared 2-core machine (measured figures: in the report/bench).
    assert statistics.median(light_ms) < 250, sorted(light_ms)


# the share itself, deterministic --------------------------------------------------------------


@pytest.fixture
async def shared_app(neondb_schema_url: str) -> AsyncIterator[FastAPI]:
    settings = app_settings(
        neondb_schema_url, app_user_max_concurrency=2, app_user_queue_timeout_s=0.2
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        yield app


async def test_a_user_over_the_share_gets_429_others_do_not(shared_app: FastAPI) -> None:
    limiter: KeyedLimiter = shared_app.state.user_limiter
    async with make_client(shared_app) as client:
        task = (await client.post("/api/tasks", json={"title": "t"}, headers=HEAVY)).json()
        # The heavy user's two slots are taken (as by two long requests in flight).
        for _ in range(2):
            await limiter.acquire("heavy")
        routes = [
            ("GET", "/api/tasks"),
            ("GET", f"/api/tasks/{task['id']}"),
            ("POST", f"/api/tasks/{task['id']}/complete"),
            ("GET", "/api/conversations"),
        ]
        for method, path in routes:
            started = time.perf_counter()
            r = await client.request(method, path, headers=HEAVY)
            assert r.status_code == 429, (path, r.text)
            assert r.json() == {"detail": "too many concurrent requests, retry later"}
            assert r.headers["Retry-After"] == "1"
            assert time.perf_counter() - started >= 0.19  # it waited for a slot first
            assert (await client.request(method, path, headers=LIGHT)).status_code in (200, 404)
        # A slot that frees while the request waits is handed to it.
        waiting = asyncio.create_task(client.get("/api/tasks", headers=HEAVY))
        for _ in range(100):
            if limiter.waiting("heavy"):
                break
            await asyncio.sleep(0.005)
        limiter.release("heavy")
        assert (await waiting).status_code == 200
        limiter.release("heavy")
        assert (await client.get("/api/tasks", headers=HEAVY)).json()["total"] == 1
        assert len(limiter) == 0


async def test_rejected_requests_take_no_slot(shared_app: FastAPI) -> None:
    limiter: KeyedLimiter = shared_app.state.user_limiter
    async with make_client(shared_app) as client:
        assert (await client.get("/api/tasks")).status_code == 401
        assert (await client.get("/api/tasks?stauts=x", headers=HEAVY)).status_code == 422
    assert len(limiter) == 0


async def test_429_is_in_the_openapi_responses_of_every_api_route(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    api = {
        (method, path): op
        for path, ops in schema["paths"].items()
        if path.startswith("/api/")
        for method, op in ops.items()
    }
    assert len(api) >= 10
    missing = [key for key, op in api.items() if "429" not in op["responses"]]
    assert missing == []


def test_default_share_is_a_quarter_of_the_pool() -> None:
    def share(**values: Any) -> int:
        return AppSettings(_env_file=None, **values).user_max_concurrency  # type: ignore[call-arg]

    assert share(db_pool_max=20) == 5
    assert share(db_pool_min=1, db_pool_max=2) == 1
    assert share(db_pool_max=20, app_user_max_concurrency=3) == 3
    assert share(db_pool_max=20, app_user_max_concurrency=0) == 0  # no limit
