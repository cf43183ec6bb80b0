"""Bad input is a 4xx, never a 500: NUL characters, lone surrogates, SQL-looking text,
exact paths; database trouble is neondb's 503/504."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import make_url

from neondb.proxy import FaultProxy
from todo_api.app import create_app
from todo_api.testing import app_settings, auth_headers, make_client

ALICE = auth_headers("alice")
JSON = {**ALICE, "content-type": "application/json"}

INJECTIONS = [
    "'; DROP TABLE tasks; --",
    "Robert'); DROP TABLE messages;--",
    '" OR 1=1 --',
    "' OR '1'='1",
    "%' OR '%'='",
    "1; SELECT pg_sleep(10)",
    "' UNION SELECT id, user_id FROM tasks --",
    "$1 $2 :id %(title)s {0} ?",
    "\\'; \\x00 \\\\",
    "E'\\047'",
    "$$; DELETE FROM conversations; $$",
    "<script>alert(1)</script>",
    "🙂 ünïcödé ∑",
]


async def tasks_named(client: httpx.AsyncClient, **params: str) -> list[Any]:
    r = await client.get("/api/tasks", params=params, headers=ALICE)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def test_sql_injection_strings_are_stored_literally(client: httpx.AsyncClient) -> None:
    for s in INJECTIONS:
        body = {"title": s, "description": s, "tags": [s, "x"]}
        r = await client.post("/api/tasks", json=body, headers=ALICE)
        assert r.status_code == 201, (s, r.text)
        task = r.json()
        assert (task["title"], task["description"], task["tags"]) == (s, s, [s, "x"])
        got = (await client.get(f"/api/tasks/{task['id']}", headers=ALICE)).json()
        assert (got["title"], got["description"], got["tags"]) == (s, s, [s, "x"])
        assert [t["id"] for t in await tasks_named(client, q=s)] == [task["id"]], s
        assert [t["id"] for t in await tasks_named(client, tag=s)] == [task["id"]], s
        r = await client.patch(f"/api/tasks/{task['id']}", json={"title": s + "!"}, headers=ALICE)
        assert r.json()["title"] == s + "!"

        conv = (await client.post("/api/conversations", json={"title": s}, headers=ALICE)).json()
        assert conv["title"] == s
        r = await client.post(
            f"/api/conversations/{conv['id']}/messages",
            json={"role": "user", "content": s},
            headers=ALICE,
        )
        assert r.json()["content"] == s
        msgs = (await client.get(f"/api/conversations/{conv['id']}/messages", headers=ALICE)).json()
        assert [m["content"] for m in msgs["items"]] == [s]
    # Nothing was dropped or deleted along the way.
    assert (await client.get("/api/tasks?limit=100", headers=ALICE)).json()["total"] == len(
        INJECTIONS
    )
    convs = (await client.get("/api/conversations?limit=100", headers=ALICE)).json()
    assert convs["total"] == len(INJECTIONS)


@pytest.mark.parametrize("s", INJECTIONS[:6])
async def test_sql_injection_in_every_query_parameter(client: httpx.AsyncClient, s: str) -> None:
    await client.post("/api/tasks", json={"title": "bystander"}, headers=ALICE)
    for name in ["status", "priority", "tag", "q", "due_before", "due_after", "limit", "offset"]:
        r = await client.get("/api/tasks", params={name: s}, headers=ALICE)
        assert r.status_code in (200, 422), (name, r.text)
    for path in ["/api/conversations", "/api/conversations/1/messages"]:
        for name in ["limit", "offset"]:
            r = await client.get(path, params={name: s}, headers=ALICE)
            assert r.status_code == 422
    for path in ["/api/tasks/", "/api/conversations/"]:
        r = await client.get(path + quote(s, safe=""), headers=ALICE)
        assert r.status_code in (404, 422)
    assert (await client.get("/api/tasks", headers=ALICE)).json()["total"] == 1


TEXT_FIELDS = [
    ("POST", "/api/tasks", {"title": "{v}"}),
    ("POST", "/api/tasks", {"title": "t", "description": "{v}"}),
    ("POST", "/api/tasks", {"title": "t", "tags": ["ok", "{v}"]}),
    ("PATCH", "/api/tasks/{t}", {"title": "{v}"}),
    ("PATCH", "/api/tasks/{t}", {"description": "{v}"}),
    ("PATCH", "/api/tasks/{t}", {"tags": ["{v}"]}),
    ("POST", "/api/conversations", {"title": "{v}"}),
    ("POST", "/api/conversations/{c}/messages", {"role": "user", "content": "{v}"}),
]


@pytest.mark.parametrize("bad", ["a\\u0000b", "\\u0000", "x\\ud800y", "\\udfff"])
async def test_unstorable_text_is_422(client: httpx.AsyncClient, bad: str) -> None:
    """NUL (PostgreSQL text cannot hold it) and lone surrogates (not UTF-8), sent as JSON
    escapes, in every text field and query parameter."""
    task = (await client.post("/api/tasks", json={"title": "t"}, headers=ALICE)).json()
    conv = (await client.post("/api/conversations", json={}, headers=ALICE)).json()
    for method, path, body in TEXT_FIELDS:
        raw = json.dumps(body).replace("{v}", bad)
        url = path.format(t=task["id"], c=conv["id"])
        r = await client.request(method, url, content=raw.encode(), headers=JSON)
        assert r.status_code == 422, (method, url, raw, r.text)
        r.json()  # the error echo is valid JSON
    for name in ["q", "tag"]:
        value = "a%00b" if "0000" in bad else "x%ED%A0%80y"
        r = await client.get(f"/api/tasks?{name}={value}", headers=ALICE)
        assert r.status_code in (200, 422), r.text
    assert (await client.get(f"/api/tasks/{task['id']}", headers=ALICE)).json() == task


async def test_nul_in_query_parameters_is_422(client: httpx.AsyncClient) -> None:
    for query in ["q=a%00", "tag=%00", "status=all%00", "priority=low%00"]:
        r = await client.get(f"/api/tasks?{query}", headers=ALICE)
        assert r.status_code == 422, query


async def test_deeply_nested_or_wrong_json_types(client: httpx.AsyncClient) -> None:
    for content in ['{"title": {"$gt": ""}}', '{"title": ["a"]}', "null", "1e999", '{"title"']:
        r = await client.post("/api/tasks", content=content.encode(), headers=JSON)
        assert r.status_code == 422, content
    # Too deep for the JSON parser: FastAPI's 400, still not a 5xx.
    nested = "[" * 5000 + "]" * 5000
    r = await client.post("/api/tasks", content=nested.encode(), headers=JSON)
    assert r.status_code in (400, 422)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/tasks/"),
        ("POST", "/api/tasks/"),
        ("GET", "/api/tasks/1/"),
        ("POST", "/api/tasks/1/complete/"),
        ("GET", "/api/conversations/"),
        ("GET", "/api/conversations/1/messages/"),
        ("GET", "/health/"),
        ("GET", "/api/task"),
        ("GET", "/API/tasks"),
    ],
)
async def test_paths_are_exact(client: httpx.AsyncClient, method: str, path: str) -> None:
    r = await client.request(method, path, headers=ALICE, follow_redirects=False)
    assert r.status_code == 404, r.status_code
    assert "location" not in r.headers


async def test_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.put("/api/tasks/1", json={}, headers=ALICE)).status_code == 405
    assert (await client.delete("/api/tasks", headers=ALICE)).status_code == 405


# database trouble ----------------------------------------------------------------------------


def _proxied_url(neondb_schema_url: str, proxy: FaultProxy) -> str:
    u = make_url(neondb_schema_url)
    query = {k: v for k, v in u.query.items() if k not in ("host", "port")}
    return u.set(host="127.0.0.1", port=proxy.port, query=query).render_as_string(
        hide_password=False
    )


def _upstream(neondb_schema_url: str) -> tuple[str, int]:
    u = make_url(neondb_schema_url)
    host = u.query.get("host") or u.host or "127.0.0.1"
    port = int(u.query.get("port") or u.port or 5432)  # type: ignore[arg-type]
    return str(host), port


async def test_database_down_is_503_not_500(neondb_schema_url: str) -> None:
    host, port = _upstream(neondb_schema_url)
    with FaultProxy(host, port) as proxy:
        settings = app_settings(
            _proxied_url(neondb_schema_url, proxy),
            db_retry_attempts=1,
            db_connect_timeout_s=2,
            db_breaker_failures=50,
        )
        app = create_app(settings)
        async with LifespanManager(app), make_client(app) as c:
            assert (
                await c.post("/api/tasks", json={"title": "x"}, headers=ALICE)
            ).status_code == 201
            proxy.mode = "refuse"
            proxy.drop_all()
            for method, path, body in [
                ("GET", "/api/tasks", None),
                ("GET", "/api/tasks/1", None),
                ("POST", "/api/tasks", {"title": "y"}),
                ("POST", "/api/conversations", {}),
            ]:
                r = await c.request(method, path, json=body, headers=ALICE)
                assert r.status_code == 503, (path, r.text)
                assert int(r.headers["retry-after"]) >= 1
                assert set(r.json()) == {"detail"}
            proxy.mode = "pass"
            assert (await c.get("/api/tasks", headers=ALICE)).status_code == 200


async def test_statement_timeout_is_504(neondb_schema_url: str) -> None:
    host, port = _upstream(neondb_schema_url)
    with FaultProxy(host, port) as proxy:
        settings = app_settings(_proxied_url(neondb_schema_url, proxy), db_statement_timeout_s=0.1)
        app = create_app(settings)
        async with LifespanManager(app), make_client(app) as c:
            assert (await c.get("/api/tasks", headers=ALICE)).status_code == 200
            # The answer arrives after the client backstop (0.1 s + 2 s): the server never
            # answered in time, as far as the app can tell.
            proxy.delay_s = 2.5
            r = await c.get("/api/tasks", headers=ALICE)
            proxy.delay_s = 0
            assert r.status_code == 504, r.text
            assert r.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    "url",
    [
        "/api/tasks?stauts=pending",
        "/api/tasks?status=pending&page=2",
        "/api/tasks/1?x=1",
        "/api/conversations?q=x",
        "/api/conversations/1/messages?order=desc",
    ],
)
async def test_unknown_query_parameters_are_422(client: httpx.AsyncClient, url: str) -> None:
    r = await client.get(url, headers=ALICE)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["type"] == "extra_forbidden"
    assert detail[0]["loc"][0] == "query"


async def test_repeated_single_valued_query_parameter_is_422(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/tasks?tag=a&tag=b", headers=ALICE)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "tag"]
    r = await client.get("/api/conversations?limit=1&limit=2", headers=ALICE)
    assert r.status_code == 422
