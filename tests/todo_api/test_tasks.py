"""`/api/tasks` through HTTP: each route's success, validation and error paths."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from todo_api.testing import auth_headers

ALICE = auth_headers("alice")


async def create(client: httpx.AsyncClient, headers: dict[str, str] = ALICE, **body: Any) -> Any:
    body.setdefault("title", "a task")
    r = await client.post("/api/tasks", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


# create ------------------------------------------------------------------------------------


async def test_create_minimal_defaults(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/tasks", json={"title": "Buy milk"}, headers=ALICE)
    assert r.status_code == 201
    task = r.json()
    assert task == {
        "id": task["id"],
        "title": "Buy milk",
        "description": None,
        "completed": False,
        "priority": "medium",
        "tags": [],
        "due_date": None,
        "recurring": False,
        "recurring_pattern": None,
        "created_at": task["created_at"],
        "updated_at": task["updated_at"],
    }
    assert isinstance(task["id"], int)
    assert task["id"] >= 1
    created = parse(task["created_at"])
    assert created.utcoffset() is not None
    assert created.utcoffset().total_seconds() == 0
    assert task["created_at"] == task["updated_at"]


async def test_create_full_and_due_date_normalised_to_utc(client: httpx.AsyncClient) -> None:
    task = await create(
        client,
        title="Report",
        description="quarterly",
        priority="high",
        tags=["work", "q1"],
        due_date="2025-03-01T09:30:00+02:00",
        recurring=True,
        recurring_pattern="weekly",
    )
    assert task["description"] == "quarterly"
    assert task["priority"] == "high"
    assert task["tags"] == ["work", "q1"]
    assert parse(task["due_date"]) == datetime(2025, 3, 1, 7, 30, tzinfo=UTC)
    assert task["due_date"].endswith("Z") or task["due_date"].endswith("+00:00")
    assert task["recurring"] is True
    assert task["recurring_pattern"] == "weekly"


async def test_create_title_bounds(client: httpx.AsyncClient) -> None:
    await create(client, title="x")
    await create(client, title="é" * 200)  # characters, not bytes
    for bad in ["", "x" * 201, None, 5]:
        r = await client.post("/api/tasks", json={"title": bad}, headers=ALICE)
        assert r.status_code == 422, bad
    r = await client.post("/api/tasks", json={}, headers=ALICE)
    assert r.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"description": "x" * 1001},
        {"priority": "urgent"},
        {"priority": None},
        {"tags": "work"},
        {"tags": [""]},
        {"tags": ["x" * 51]},
        {"tags": [f"t{i}" for i in range(21)]},
        {"tags": None},
        {"due_date": "tomorrow"},
        {"due_date": "2025-01-01T10:00:00"},  # no time zone
        {"due_date": "0001-01-01T00:00:00+01:00"},  # before year 1 in UTC
        {"due_date": "9999-12-31T23:00:00-05:00"},  # past year 9999 in UTC
        {"recurring": True},  # without a pattern
        {"recurring": True, "recurring_pattern": None},
        {"recurring": True, "recurring_pattern": "yearly"},
        {"recurring": "maybe"},
        {"completed": True},  # server-controlled on create
        {"id": 5},
        {"created_at": "2025-01-01T00:00:00Z"},
        {"user_id": "bob"},
        {"unknown": 1},
    ],
)
async def test_create_rejects(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    r = await client.post("/api/tasks", json={"title": "t", **body}, headers=ALICE)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)


async def test_create_rejects_non_json_and_non_object(client: httpx.AsyncClient) -> None:
    for content in [b"not json", b"[1, 2]", b'"title"', b""]:
        r = await client.post(
            "/api/tasks", content=content, headers={**ALICE, "content-type": "application/json"}
        )
        assert r.status_code == 422, content


async def test_tags_deduplicated_in_order(client: httpx.AsyncClient) -> None:
    task = await create(client, tags=["b", "a", "b", "c", "a"])
    assert task["tags"] == ["b", "a", "c"]


async def test_pattern_without_recurring_is_kept(client: httpx.AsyncClient) -> None:
    task = await create(client, recurring=False, recurring_pattern="daily")
    assert task["recurring"] is False
    assert task["recurring_pattern"] == "daily"


# get ---------------------------------------------------------------------------------------


async def test_get(client: httpx.AsyncClient) -> None:
    task = await create(client, title="one")
    r = await client.get(f"/api/tasks/{task['id']}", headers=ALICE)
    assert r.status_code == 200
    assert r.json() == task


async def test_get_missing_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/tasks/12345", headers=ALICE)
    assert r.status_code == 404
    assert r.json() == {"detail": "Task not found"}


@pytest.mark.parametrize("task_id", ["0", "-1", str(2**63), str(10**30), "abc", "1.5"])
async def test_impossible_ids_are_422(client: httpx.AsyncClient, task_id: str) -> None:
    for method, suffix in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/complete")]:
        kw: dict[str, Any] = {"json": {"title": "x"}} if method == "PATCH" else {}
        r = await client.request(method, f"/api/tasks/{task_id}{suffix}", headers=ALICE, **kw)
        assert r.status_code == 422, (method, task_id, r.text)


async def test_largest_id_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/api/tasks/{2**63 - 1}", headers=ALICE)
    assert r.status_code == 404


# patch -------------------------------------------------------------------------------------


async def test_patch_partial_and_updated_at_advances(client: httpx.AsyncClient) -> None:
    task = await create(client, title="old", description="d", tags=["x"], priority="low")
    r = await client.patch(f"/api/tasks/{task['id']}", json={"title": "new"}, headers=ALICE)
    assert r.status_code == 200
    new = r.json()
    assert new["title"] == "new"
    assert (new["description"], new["tags"], new["priority"]) == ("d", ["x"], "low")
    assert new["created_at"] == task["created_at"]
    assert parse(new["updated_at"]) > parse(task["updated_at"])
    assert (await client.get(f"/api/tasks/{task['id']}", headers=ALICE)).json() == new


async def test_patch_every_field(client: httpx.AsyncClient) -> None:
    task = await create(client)
    body = {
        "title": "t2",
        "description": "desc",
        "completed": True,
        "priority": "high",
        "tags": ["a", "b"],
        "due_date": "2030-05-05T05:05:05Z",
        "recurring": True,
        "recurring_pattern": "monthly",
    }
    r = await client.patch(f"/api/tasks/{task['id']}", json=body, headers=ALICE)
    assert r.status_code == 200
    got = r.json()
    for key, value in body.items():
        if key == "due_date":
            assert parse(got[key]) == parse(value)
        else:
            assert got[key] == value, key


async def test_patch_null_clears_description_and_due_date(client: httpx.AsyncClient) -> None:
    task = await create(client, description="d", due_date="2030-01-01T00:00:00Z")
    r = await client.patch(
        f"/api/tasks/{task['id']}", json={"description": None, "due_date": None}, headers=ALICE
    )
    assert r.status_code == 200
    assert r.json()["description"] is None
    assert r.json()["due_date"] is None


async def test_patch_can_uncomplete(client: httpx.AsyncClient) -> None:
    task = await create(client)
    url = f"/api/tasks/{task['id']}"
    assert (await client.patch(url, json={"completed": True}, headers=ALICE)).json()["completed"]
    r = await client.patch(url, json={"completed": False}, headers=ALICE)
    assert r.json()["completed"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"title": None},
        {"title": ""},
        {"title": "x" * 201},
        {"completed": None},
        {"priority": None},
        {"priority": "urgent"},
        {"tags": None},
        {"recurring": None},
        {"recurring": True},  # the task has no pattern
        {"recurring": True, "recurring_pattern": None},
        {"due_date": "2025-01-01"},
        {"id": 1},
        {"user_id": "mallory"},
        {"updated_at": "2025-01-01T00:00:00Z"},
        {"nope": True},
    ],
)
async def test_patch_rejects(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    task = await create(client)
    r = await client.patch(f"/api/tasks/{task['id']}", json=body, headers=ALICE)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)
    assert (await client.get(f"/api/tasks/{task['id']}", headers=ALICE)).json() == task


async def test_patch_clearing_pattern_of_recurring_task_is_422(client: httpx.AsyncClient) -> None:
    task = await create(client, recurring=True, recurring_pattern="daily")
    r = await client.patch(
        f"/api/tasks/{task['id']}", json={"recurring_pattern": None}, headers=ALICE
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "recurring_pattern"]
    # Turning recurrence off first, then clearing the pattern, is fine.
    url = f"/api/tasks/{task['id']}"
    r = await client.patch(url, json={"recurring": False, "recurring_pattern": None}, headers=ALICE)
    assert r.status_code == 200


async def test_patch_empty_body_changes_nothing(client: httpx.AsyncClient) -> None:
    task = await create(client)
    r = await client.patch(f"/api/tasks/{task['id']}", json={}, headers=ALICE)
    assert r.status_code == 200
    assert r.json() == task


async def test_patch_missing_is_404(client: httpx.AsyncClient) -> None:
    for body in [{"title": "x"}, {}]:
        r = await client.patch("/api/tasks/999", json=body, headers=ALICE)
        assert r.status_code == 404
        assert r.json() == {"detail": "Task not found"}


# delete ------------------------------------------------------------------------------------


async def test_delete(client: httpx.AsyncClient) -> None:
    task = await create(client)
    r = await client.delete(f"/api/tasks/{task['id']}", headers=ALICE)
    assert r.status_code == 204
    assert r.content == b""
    assert (await client.get(f"/api/tasks/{task['id']}", headers=ALICE)).status_code == 404
    r = await client.delete(f"/api/tasks/{task['id']}", headers=ALICE)
    assert r.status_code == 404
    assert r.json() == {"detail": "Task not found"}


# list --------------------------------------------------------------------------------------


async def test_list_empty(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/tasks", headers=ALICE)
    assert r.status_code == 200
    assert r.json() == {"items": [], "total": 0}


async def test_list_newest_first_with_pagination(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, title=f"t{i}"))["id"] for i in range(7)]
    newest_first = ids[::-1]
    r = await client.get("/api/tasks", headers=ALICE)
    assert [t["id"] for t in r.json()["items"]] == newest_first
    assert r.json()["total"] == 7
    seen = []
    for offset in range(0, 7, 3):
        page = (await client.get(f"/api/tasks?limit=3&offset={offset}", headers=ALICE)).json()
        assert page["total"] == 7
        seen += [t["id"] for t in page["items"]]
    assert seen == newest_first
    past = (await client.get("/api/tasks?limit=3&offset=50", headers=ALICE)).json()
    assert past == {"items": [], "total": 7}
    # An offset past int32 (found by the fuzzer) and the largest one allowed.
    for offset in (2**31, 2**63 - 1):
        far = await client.get(f"/api/tasks?limit=3&offset={offset}", headers=ALICE)
        assert far.status_code == 200, far.text
        assert far.json() == {"items": [], "total": 7}


async def test_list_default_limit_is_20(client: httpx.AsyncClient) -> None:
    for i in range(22):
        await create(client, title=f"t{i}")
    page = (await client.get("/api/tasks", headers=ALICE)).json()
    assert len(page["items"]) == 20
    assert page["total"] == 22


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=x",
        "offset=-1",
        f"offset={2**63}",
        "status=done",
        "priority=urgent",
        "due_before=yesterday",
        "due_after=2025-01-01T00:00:00",
        "tag=",
        "q=%00",
        "tag=a%00b",
        f"q={'x' * 201}",
    ],
)
async def test_list_rejects(client: httpx.AsyncClient, query: str) -> None:
    r = await client.get(f"/api/tasks?{query}", headers=ALICE)
    assert r.status_code == 422, r.text


async def test_list_filters(client: httpx.AsyncClient) -> None:
    a = await create(client, title="Homework report", priority="high", tags=["work"])
    b = await create(client, title="Workshop", description="wood", tags=["workshop", "home"])
    c = await create(client, title="groceries", description="Buy MILK", priority="low")
    d = await create(client, title="dentist", due_date="2025-06-01T10:00:00Z")
    e = await create(client, title="taxes", due_date="2025-04-15T00:00:00Z")
    await client.post(f"/api/tasks/{c['id']}/complete", headers=ALICE)

    async def ids(query: str) -> list[int]:
        r = await client.get(f"/api/tasks?{query}", headers=ALICE)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total"] == len(body["items"])
        return [t["id"] for t in body["items"]]

    assert await ids("status=all") == [e["id"], d["id"], c["id"], b["id"], a["id"]]
    assert await ids("status=completed") == [c["id"]]
    assert await ids("status=pending") == [e["id"], d["id"], b["id"], a["id"]]
    assert await ids("priority=high") == [a["id"]]
    assert await ids("priority=medium") == [e["id"], d["id"], b["id"]]
    assert await ids("tag=work") == [a["id"]]  # not "workshop"
    assert await ids("tag=workshop") == [b["id"]]
    assert await ids("tag=Work") == []  # tags match exactly
    assert await ids("q=milk") == [c["id"]]  # description, any case
    assert await ids("q=WORK") == [b["id"], a["id"]]  # title, any case
    assert await ids("q=") == await ids("")
    assert await ids("due_after=2025-05-01T00:00:00Z") == [d["id"]]
    assert await ids("due_before=2025-05-01T00:00:00Z") == [e["id"]]
    assert await ids("due_after=2025-04-15T00:00:00Z&due_before=2025-06-01T10:00:00Z") == [e["id"]]
    assert await ids("due_before=2025-06-01T12:00:00%2B02:00") == [e["id"]]  # 10:00Z excluded
    assert await ids("status=pending&priority=medium&q=w") == [b["id"]]
    assert await ids("status=completed&tag=work") == []


async def test_q_is_literal(client: httpx.AsyncClient) -> None:
    pct = await create(client, title="100% done")
    under = await create(client, title="snake_case")
    slash = await create(client, title="back\\slash")
    plain = await create(client, title="100 percent and snakeXcase")

    async def ids(q: str) -> list[int]:
        r = await client.get("/api/tasks", params={"q": q}, headers=ALICE)
        return sorted(t["id"] for t in r.json()["items"])

    assert await ids("%") == [pct["id"]]
    assert await ids("0% d") == [pct["id"]]
    assert await ids("_") == [under["id"]]
    assert await ids("e_c") == [under["id"]]
    assert await ids("\\") == [slash["id"]]
    assert await ids("k\\s") == [slash["id"]]
    assert await ids("%%") == []
    assert plain["id"] not in await ids("snake_case")


async def test_same_created_at_orders_by_id(client: httpx.AsyncClient, api_app: Any) -> None:
    # Rows created in one transaction share created_at: the id breaks the tie, stably.
    from sqlalchemy import text

    db = api_app.state.neondb
    async with db.session() as s:
        await s.execute(
            text(
                "INSERT INTO tasks (user_id, title) "
                "SELECT 'alice', 'bulk ' || g FROM generate_series(1, 5) g"
            )
        )
    first = (await client.get("/api/tasks?limit=2", headers=ALICE)).json()["items"]
    rest = (await client.get("/api/tasks?limit=3&offset=2", headers=ALICE)).json()["items"]
    ids = [t["id"] for t in first + rest]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 5
