"""Users never see each other's rows: another user's resource is a 404 byte-for-byte
identical to a missing one's, and lists only ever hold the caller's rows."""

from __future__ import annotations

from typing import Any

import httpx

from todo_api.testing import auth_headers

ALICE = auth_headers("alice")
BOB = auth_headers("bob")


async def alice_world(client: httpx.AsyncClient) -> tuple[Any, Any]:
    r = await client.post(
        "/api/tasks",
        json={
            "title": "alice's secret",
            "tags": ["shared-tag"],
            "due_date": "2025-01-31T00:00:00Z",
            "recurring": True,
            "recurring_pattern": "daily",
        },
        headers=ALICE,
    )
    task = r.json()
    conv = (await client.post("/api/conversations", json={"title": "alice"}, headers=ALICE)).json()
    r = await client.post(
        f"/api/conversations/{conv['id']}/messages",
        json={"role": "user", "content": "private"},
        headers=ALICE,
    )
    assert r.status_code == 201
    return task, conv


def _without_request_id(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k != "x-request-id"}


async def test_every_route_is_404_for_another_user(client: httpx.AsyncClient) -> None:
    task, conv = await alice_world(client)
    missing_task, missing_conv = task["id"] + 1000, conv["id"] + 1000
    calls = [
        ("GET", "/api/tasks/{t}", None),
        ("PATCH", "/api/tasks/{t}", {"title": "mine now"}),
        ("PATCH", "/api/tasks/{t}", {}),
        ("POST", "/api/tasks/{t}/complete", None),
        ("DELETE", "/api/tasks/{t}", None),
        ("GET", "/api/conversations/{c}", None),
        ("GET", "/api/conversations/{c}/messages", None),
        ("GET", "/api/conversations/{c}/messages?offset=5", None),
        ("POST", "/api/conversations/{c}/messages", {"role": "user", "content": "hi"}),
        ("DELETE", "/api/conversations/{c}", None),
    ]
    for method, template, body in calls:
        theirs = template.format(t=task["id"], c=conv["id"])
        missing = template.format(t=missing_task, c=missing_conv)
        r_theirs = await client.request(method, theirs, json=body, headers=BOB)
        r_missing = await client.request(method, missing, json=body, headers=BOB)
        assert r_theirs.status_code == 404, (method, theirs)
        assert r_theirs.content == r_missing.content, (method, theirs)
        # Every header alike but the request id, which is each request's own.
        assert _without_request_id(r_theirs) == _without_request_id(r_missing), (method, theirs)

    # Alice's rows are untouched.
    r = await client.get(f"/api/tasks/{task['id']}", headers=ALICE)
    assert r.json() == task
    after = (await client.get(f"/api/conversations/{conv['id']}", headers=ALICE)).json()
    assert after["title"] == "alice"
    msgs = (await client.get(f"/api/conversations/{conv['id']}/messages", headers=ALICE)).json()
    assert [m["content"] for m in msgs["items"]] == ["private"]
    assert (await client.get("/api/tasks", headers=ALICE)).json()["total"] == 1


async def test_lists_hold_only_the_callers_rows(client: httpx.AsyncClient) -> None:
    await alice_world(client)
    r = await client.post(
        "/api/tasks", json={"title": "bob's", "tags": ["shared-tag"]}, headers=BOB
    )
    bob_task = r.json()
    bob_conv = (await client.post("/api/conversations", json={}, headers=BOB)).json()
    queries = [
        "",
        "?status=pending",
        "?status=completed",
        "?tag=shared-tag",
        "?q=secret",
        "?q=s",
        "?due_after=2000-01-01T00:00:00Z",
        "?offset=5",
    ]
    for query in queries:
        page = (await client.get(f"/api/tasks{query}", headers=BOB)).json()
        assert all(t["id"] == bob_task["id"] for t in page["items"]), query
        assert page["total"] <= 1, query
    page = (await client.get("/api/conversations", headers=BOB)).json()
    assert page == {"items": [bob_conv], "total": 1}
    page = (await client.get("/api/conversations?offset=3", headers=BOB)).json()
    assert page == {"items": [], "total": 1}


async def test_same_sub_is_the_same_user_across_tokens(client: httpx.AsyncClient) -> None:
    await client.post("/api/tasks", json={"title": "x"}, headers=ALICE)
    again = auth_headers("alice", ttl_s=60)
    assert (await client.get("/api/tasks", headers=again)).json()["total"] == 1
    # An admin is still only a user for the API's resources.
    root = auth_headers("root", admin=True)
    assert (await client.get("/api/tasks", headers=root)).json()["total"] == 0
