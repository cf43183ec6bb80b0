"""`/api/conversations` and their messages through HTTP."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from todo_api.testing import auth_headers

ALICE = auth_headers("alice")


async def new_conversation(client: httpx.AsyncClient, **body: Any) -> Any:
    r = await client.post("/api/conversations", json=body, headers=ALICE)
    assert r.status_code == 201, r.text
    return r.json()


async def post(client: httpx.AsyncClient, cid: int, content: str, role: str = "user") -> Any:
    r = await client.post(
        f"/api/conversations/{cid}/messages", json={"role": role, "content": content}, headers=ALICE
    )
    assert r.status_code == 201, r.text
    return r.json()


def when(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


async def test_create_with_and_without_title(client: httpx.AsyncClient) -> None:
    plain = await new_conversation(client)
    assert plain == {
        "id": plain["id"],
        "title": None,
        "created_at": plain["created_at"],
        "updated_at": plain["created_at"],
    }
    titled = await new_conversation(client, title="Trip planning")
    assert titled["title"] == "Trip planning"
    assert (await new_conversation(client, title=None))["title"] is None
    assert (await new_conversation(client, title="x" * 200))["title"] == "x" * 200


@pytest.mark.parametrize(
    "body", [{"title": "x" * 201}, {"title": 3}, {"title": "a\u0000b"}, {"id": 1}, {"x": 1}]
)
async def test_create_rejects(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    r = await client.post("/api/conversations", json=body, headers=ALICE)
    assert r.status_code == 422, r.text


async def test_get_and_404(client: httpx.AsyncClient) -> None:
    conv = await new_conversation(client, title="t")
    r = await client.get(f"/api/conversations/{conv['id']}", headers=ALICE)
    assert r.status_code == 200
    assert r.json() == conv
    r = await client.get("/api/conversations/999", headers=ALICE)
    assert r.status_code == 404
    assert r.json() == {"detail": "Conversation not found"}
    for bad in ["0", "-3", str(2**63), "x"]:
        assert (await client.get(f"/api/conversations/{bad}", headers=ALICE)).status_code == 422


async def test_list_most_recently_updated_first(client: httpx.AsyncClient) -> None:
    a = await new_conversation(client, title="a")
    b = await new_conversation(client, title="b")
    c = await new_conversation(client, title="c")

    async def ids(query: str = "") -> list[int]:
        r = await client.get(f"/api/conversations{query}", headers=ALICE)
        assert r.status_code == 200
        return [x["id"] for x in r.json()["items"]]

    assert await ids() == [c["id"], b["id"], a["id"]]
    await post(client, a["id"], "bump")
    assert await ids() == [a["id"], c["id"], b["id"]]
    page = (await client.get("/api/conversations?limit=2&offset=1", headers=ALICE)).json()
    assert [x["id"] for x in page["items"]] == [c["id"], b["id"]]
    assert page["total"] == 3
    past = (await client.get("/api/conversations?offset=10", headers=ALICE)).json()
    assert past == {"items": [], "total": 3}
    for bad in ["limit=0", "limit=101", "offset=-1"]:
        assert (await client.get(f"/api/conversations?{bad}", headers=ALICE)).status_code == 422


async def test_list_empty(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/conversations", headers=ALICE)
    assert r.json() == {"items": [], "total": 0}


async def test_post_message_bumps_updated_at(client: httpx.AsyncClient) -> None:
    conv = await new_conversation(client)
    msg = await post(client, conv["id"], "Hello", role="user")
    assert msg == {
        "id": msg["id"],
        "conversation_id": conv["id"],
        "role": "user",
        "content": "Hello",
        "created_at": msg["created_at"],
    }
    after = (await client.get(f"/api/conversations/{conv['id']}", headers=ALICE)).json()
    assert after["updated_at"] == msg["created_at"]
    assert when(after["updated_at"]) > when(conv["updated_at"])
    assert after["created_at"] == conv["created_at"]


@pytest.mark.parametrize(
    "body",
    [
        {"role": "robot", "content": "x"},
        {"role": "user", "content": ""},
        {"role": "user", "content": "x" * 32_001},
        {"role": "user"},
        {"content": "x"},
        {"role": "user", "content": "nul \u0000 here"},
        {"role": "user", "content": None},
        {"role": "user", "content": "x", "conversation_id": 2},
        {"role": "user", "content": "x", "extra": True},
    ],
)
async def test_post_message_rejects(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    conv = await new_conversation(client)
    r = await client.post(f"/api/conversations/{conv['id']}/messages", json=body, headers=ALICE)
    assert r.status_code == 422, r.text
    after = (await client.get(f"/api/conversations/{conv['id']}", headers=ALICE)).json()
    assert after == conv  # not bumped either


async def test_message_roles_and_longest_content(client: httpx.AsyncClient) -> None:
    conv = await new_conversation(client)
    for role in ("user", "assistant", "system"):
        assert (await post(client, conv["id"], "hi", role=role))["role"] == role
    assert (await post(client, conv["id"], "y" * 32_000))["content"] == "y" * 32_000


async def test_post_message_to_missing_conversation_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/conversations/777/messages", json={"role": "user", "content": "x"}, headers=ALICE
    )
    assert r.status_code == 404
    assert r.json() == {"detail": "Conversation not found"}


async def test_list_messages_oldest_first(client: httpx.AsyncClient) -> None:
    conv = await new_conversation(client)
    sent = [await post(client, conv["id"], f"m{i}") for i in range(5)]
    r = await client.get(f"/api/conversations/{conv['id']}/messages", headers=ALICE)
    assert r.status_code == 200
    assert r.json() == {"items": sent, "total": 5}
    page = (
        await client.get(
            f"/api/conversations/{conv['id']}/messages?limit=2&offset=2", headers=ALICE
        )
    ).json()
    assert page == {"items": sent[2:4], "total": 5}
    past = (
        await client.get(f"/api/conversations/{conv['id']}/messages?offset=9", headers=ALICE)
    ).json()
    assert past == {"items": [], "total": 5}


async def test_list_messages_of_empty_and_missing(client: httpx.AsyncClient) -> None:
    conv = await new_conversation(client)
    url = f"/api/conversations/{conv['id']}/messages"
    assert (await client.get(url, headers=ALICE)).json() == {"items": [], "total": 0}
    assert (await client.get(f"{url}?offset=3", headers=ALICE)).json() == {"items": [], "total": 0}
    for query in ["", "?offset=3"]:
        r = await client.get(f"/api/conversations/555/messages{query}", headers=ALICE)
        assert r.status_code == 404
        assert r.json() == {"detail": "Conversation not found"}
    for bad in ["limit=0", "limit=101", "offset=-1"]:
        assert (await client.get(f"{url}?{bad}", headers=ALICE)).status_code == 422


async def test_delete_cascades_to_messages(client: httpx.AsyncClient, api_app: Any) -> None:
    conv = await new_conversation(client)
    other = await new_conversation(client)
    for i in range(3):
        await post(client, conv["id"], f"m{i}")
    await post(client, other["id"], "stays")
    r = await client.delete(f"/api/conversations/{conv['id']}", headers=ALICE)
    assert r.status_code == 204
    assert r.content == b""
    assert (await client.get(f"/api/conversations/{conv['id']}", headers=ALICE)).status_code == 404
    r = await client.get(f"/api/conversations/{conv['id']}/messages", headers=ALICE)
    assert r.status_code == 404
    async with api_app.state.neondb.read_session() as s:
        left = (await s.execute(text("SELECT conversation_id FROM messages"))).scalars().all()
    assert left == [other["id"]]
    r = await client.delete(f"/api/conversations/{conv['id']}", headers=ALICE)
    assert r.status_code == 404
    assert r.json() == {"detail": "Conversation not found"}


async def updated_at_and_newest_message(api_app: Any, cid: int) -> tuple[datetime, datetime]:
    async with api_app.state.neondb.read_session() as s:
        row = (
            await s.execute(
                text(
                    "SELECT c.updated_at, max(m.created_at) AS newest FROM conversations c "
                    "JOIN messages m ON m.conversation_id = c.id WHERE c.id = :id "
                    "GROUP BY c.updated_at"
                ),
                {"id": cid},
            )
        ).one()
    return row.updated_at, row.newest


async def test_updated_at_never_falls_behind_a_post_that_committed_first(
    client: httpx.AsyncClient, api_app: Any
) -> None:
    """now() is when a post's transaction started: the post that started first but commits
    last must not move `updated_at` back before the other's message."""
    conv = await new_conversation(client)
    # The first post to reach its UPDATE waits there before touching the row (a statement
    # trigger runs before any row is locked); the post sent meanwhile commits first.
    async with api_app.state.neondb.autocommit() as s:
        for sql in [
            "CREATE TABLE slow_once (n int)",
            "INSERT INTO slow_once VALUES (1)",
            """CREATE FUNCTION slow_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM slow_once
                WHERE n IN (SELECT n FROM slow_once FOR UPDATE SKIP LOCKED);
                IF FOUND THEN
                    PERFORM pg_sleep(0.6);
                END IF;
                RETURN NULL;
            END $$""",
            "CREATE TRIGGER slow_once BEFORE UPDATE ON conversations "
            "FOR EACH STATEMENT EXECUTE FUNCTION slow_once()",
        ]:
            await s.execute(text(sql))
    first = asyncio.create_task(post(client, conv["id"], "started first"))
    await asyncio.sleep(0.25)
    second = await post(client, conv["id"], "committed first")
    earlier = await first
    assert when(earlier["created_at"]) < when(second["created_at"])
    updated_at, newest = await updated_at_and_newest_message(api_app, conv["id"])
    assert newest == when(second["created_at"])
    assert updated_at >= newest


async def test_updated_at_covers_every_message_of_concurrent_posts(
    client: httpx.AsyncClient, api_app: Any
) -> None:
    conv = await new_conversation(client)
    for _ in range(3):
        await asyncio.gather(*(post(client, conv["id"], f"m{i}") for i in range(10)))
        updated_at, newest = await updated_at_and_newest_message(api_app, conv["id"])
        assert updated_at >= newest
