"""`POST /api/tasks/{id}/complete`: completion and the next occurrence of recurring tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text

from todo_api.app import create_app
from todo_api.testing import app_settings, auth_headers, make_client

ALICE = auth_headers("alice")


async def create(client: httpx.AsyncClient, **body: Any) -> Any:
    body.setdefault("title", "water plants")
    r = await client.post("/api/tasks", json=body, headers=ALICE)
    assert r.status_code == 201, r.text
    return r.json()


async def complete(client: httpx.AsyncClient, task_id: int) -> Any:
    r = await client.post(f"/api/tasks/{task_id}/complete", headers=ALICE)
    assert r.status_code == 200, r.text
    return r.json()


async def all_tasks(client: httpx.AsyncClient) -> list[Any]:
    r = await client.get("/api/tasks?limit=100", headers=ALICE)
    return list(r.json()["items"])


def when(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


@pytest.mark.parametrize(
    ("pattern", "due", "expected"),
    [
        ("daily", "2025-03-09T08:00:00Z", datetime(2025, 3, 10, 8, tzinfo=UTC)),
        ("daily", "2024-12-31T23:30:00Z", datetime(2025, 1, 1, 23, 30, tzinfo=UTC)),
        ("weekly", "2025-01-28T12:00:00Z", datetime(2025, 2, 4, 12, tzinfo=UTC)),
        ("monthly", "2025-01-15T09:00:00Z", datetime(2025, 2, 15, 9, tzinfo=UTC)),
        ("monthly", "2025-01-31T09:00:00Z", datetime(2025, 2, 28, 9, tzinfo=UTC)),
        ("monthly", "2024-01-31T09:00:00Z", datetime(2024, 2, 29, 9, tzinfo=UTC)),  # leap year
        ("monthly", "2025-03-31T00:00:00Z", datetime(2025, 4, 30, tzinfo=UTC)),
        ("monthly", "2025-12-31T18:00:00Z", datetime(2026, 1, 31, 18, tzinfo=UTC)),
        # Given with an offset, computed in UTC: Jan 31 22:00 +02:00 is Jan 31 20:00Z.
        ("monthly", "2025-01-31T22:00:00+02:00", datetime(2025, 2, 28, 20, tzinfo=UTC)),
    ],
)
async def test_next_occurrence(
    client: httpx.AsyncClient, pattern: str, due: str, expected: datetime
) -> None:
    task = await create(
        client,
        description="both",
        priority="high",
        tags=["home", "garden"],
        due_date=due,
        recurring=True,
        recurring_pattern=pattern,
    )
    result = await complete(client, task["id"])
    done, nxt = result["task"], result["next"]
    assert done["id"] == task["id"]
    assert done["completed"] is True
    assert when(done["updated_at"]) > when(task["updated_at"])
    assert nxt is not None
    assert nxt["id"] != task["id"]
    assert when(nxt["due_date"]) == expected
    assert nxt["completed"] is False
    for key in ("title", "description", "priority", "tags", "recurring", "recurring_pattern"):
        assert nxt[key] == task[key], key
    # Both are stored: the next one is the newest task.
    stored = await all_tasks(client)
    assert [t["id"] for t in stored] == [nxt["id"], task["id"]]
    assert stored[0] == nxt


async def test_chain_of_monthly_occurrences(client: httpx.AsyncClient) -> None:
    task = await create(
        client, due_date="2024-01-31T10:00:00Z", recurring=True, recurring_pattern="monthly"
    )
    dues = []
    for _ in range(3):
        task = (await complete(client, task["id"]))["next"]
        dues.append(when(task["due_date"]))
    # From the clamped date on, the day stays the 29th.
    assert dues == [
        datetime(2024, 2, 29, 10, tzinfo=UTC),
        datetime(2024, 3, 29, 10, tzinfo=UTC),
        datetime(2024, 4, 29, 10, tzinfo=UTC),
    ]


async def test_completing_twice_creates_one_next(client: httpx.AsyncClient) -> None:
    task = await create(
        client, due_date="2025-01-01T00:00:00Z", recurring=True, recurring_pattern="daily"
    )
    first = await complete(client, task["id"])
    second = await complete(client, task["id"])
    assert first["next"] is not None
    assert second["next"] is None
    assert second["task"] == first["task"]
    assert len(await all_tasks(client)) == 2


@pytest.fixture
async def unqueued(neondb_schema_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # No per-user share: the point is one user's statements racing on one row, not queued.
    app = create_app(app_settings(neondb_schema_url, app_user_max_concurrency=0))
    async with LifespanManager(app), make_client(app) as c:
        yield c


async def test_concurrent_completions_create_one_next(unqueued: httpx.AsyncClient) -> None:
    client = unqueued
    task = await create(
        client, due_date="2025-01-01T00:00:00Z", recurring=True, recurring_pattern="weekly"
    )
    results = await asyncio.wait_for(
        asyncio.gather(*(complete(client, task["id"]) for _ in range(8))), timeout=60
    )
    nexts = [r["next"] for r in results if r["next"] is not None]
    assert len(nexts) == 1
    assert all(r["task"]["completed"] for r in results)
    assert len(await all_tasks(client)) == 2


async def test_complete_non_recurring(client: httpx.AsyncClient) -> None:
    task = await create(client, due_date="2025-01-01T00:00:00Z")
    result = await complete(client, task["id"])
    assert result["task"]["completed"] is True
    assert result["next"] is None
    assert len(await all_tasks(client)) == 1


async def test_complete_recurring_without_due_date(client: httpx.AsyncClient) -> None:
    task = await create(client, recurring=True, recurring_pattern="daily")
    result = await complete(client, task["id"])
    assert result["task"]["completed"] is True
    assert result["next"] is None
    assert len(await all_tasks(client)) == 1


async def test_pattern_without_recurring_creates_no_next(client: httpx.AsyncClient) -> None:
    task = await create(client, due_date="2025-01-01T00:00:00Z", recurring_pattern="daily")
    assert (await complete(client, task["id"]))["next"] is None


async def test_reopened_and_completed_again_makes_no_duplicate(client: httpx.AsyncClient) -> None:
    # Issue 8 (6): each complete / PATCH completed=false round used to add another
    # identical next occurrence. One occurrence yields at most one next occurrence.
    task = await create(
        client, due_date="2025-01-07T09:00:00Z", recurring=True, recurring_pattern="weekly"
    )
    first = await complete(client, task["id"])
    assert when(first["next"]["due_date"]) == datetime(2025, 1, 14, 9, tzinfo=UTC)
    for _ in range(3):
        r = await client.patch(f"/api/tasks/{task['id']}", json={"completed": False}, headers=ALICE)
        assert r.json()["completed"] is False
        again = await complete(client, task["id"])
        assert again["task"]["completed"] is True
        assert again["next"] is None
    tasks = await all_tasks(client)
    assert sorted(t["id"] for t in tasks) == sorted([task["id"], first["next"]["id"]])
    # The next occurrence is a new occurrence: completing it yields its own next, once.
    second = await complete(client, first["next"]["id"])
    assert when(second["next"]["due_date"]) == datetime(2025, 1, 21, 9, tzinfo=UTC)
    assert len(await all_tasks(client)) == 3


async def test_reopened_after_its_next_was_deleted_makes_one_again(
    client: httpx.AsyncClient,
) -> None:
    # The unique key is the source occurrence: once its next one is deleted, completing the
    # reopened occurrence schedules a next one again (one at a time, never two).
    task = await create(
        client, due_date="2025-01-01T00:00:00Z", recurring=True, recurring_pattern="daily"
    )
    nxt = (await complete(client, task["id"]))["next"]
    assert (await client.delete(f"/api/tasks/{nxt['id']}", headers=ALICE)).status_code == 204
    await client.patch(f"/api/tasks/{task['id']}", json={"completed": False}, headers=ALICE)
    again = (await complete(client, task["id"]))["next"]
    assert again is not None
    assert again["id"] != nxt["id"]
    assert again["due_date"] == nxt["due_date"]
    assert len(await all_tasks(client)) == 2


async def test_patch_completed_creates_no_next(client: httpx.AsyncClient) -> None:
    task = await create(
        client, due_date="2025-01-01T00:00:00Z", recurring=True, recurring_pattern="daily"
    )
    r = await client.patch(f"/api/tasks/{task['id']}", json={"completed": True}, headers=ALICE)
    assert r.json()["completed"] is True
    assert len(await all_tasks(client)) == 1


async def test_series_ends_at_year_9999(client: httpx.AsyncClient, api_app: Any) -> None:
    task = await create(
        client, due_date="9998-12-20T00:00:00Z", recurring=True, recurring_pattern="monthly"
    )
    nxt = (await complete(client, task["id"]))["next"]
    assert when(nxt["due_date"]) == datetime(9999, 1, 20, tzinfo=UTC)
    # Past 9999-12-31 PostgreSQL could store the date but Python could not read it back:
    # the series ends there instead of failing.
    async with api_app.state.neondb.session() as s:
        await s.execute(
            text("UPDATE tasks SET due_date = '9999-12-15 00:00:00+00' WHERE id = :id"),
            {"id": nxt["id"]},
        )
    result = await complete(client, nxt["id"])
    assert result["task"]["completed"] is True
    assert result["next"] is None


async def test_complete_missing_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/tasks/4242/complete", headers=ALICE)
    assert r.status_code == 404
    assert r.json() == {"detail": "Task not found"}
