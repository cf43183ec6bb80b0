"""OpenAPI at /openapi.json and Swagger UI at /docs, served without any outside host."""

from __future__ import annotations

import re

import httpx

EXPECTED = {
    "/api/tasks": {"get", "post"},
    "/api/tasks/{task_id}": {"get", "patch", "delete"},
    "/api/tasks/{task_id}/complete": {"post"},
    "/api/conversations": {"get", "post"},
    "/api/conversations/{conversation_id}": {"get", "delete"},
    "/api/conversations/{conversation_id}/messages": {"get", "post"},
    "/health": {"get"},
    "/health/db": {"get"},
    "/admin/db/pool-stats": {"get"},
    "/metrics": {"get"},
}


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert {path: set(ops) for path, ops in spec["paths"].items()} == EXPECTED
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_openapi_declares_error_responses(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"401", "422", "503", "504"} <= codes, (method, path, codes)
            if "{" in path:
                assert "404" in codes, (method, path)
            assert op["security"] == [{"HTTPBearer": []}], (method, path)


async def test_openapi_schema_rules(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    create = schemas["TaskCreate"]
    assert create["additionalProperties"] is False
    assert create["required"] == ["title"]
    assert create["properties"]["title"]["maxLength"] == 200
    assert schemas["TaskUpdate"]["additionalProperties"] is False
    assert schemas["MessageCreate"]["properties"]["role"]["enum"] == ["user", "assistant", "system"]


async def test_docs_work_offline(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200
    html = r.text
    assert "swagger-ui" in html.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html), html
    assert not re.search(r"https?://", html.replace("http://www.w3.org", "")), html
    assert "/openapi.json" in html
    assets = re.findall(r"(?:src|href)=\"(/[^\"]+)\"", html) + re.findall(r"url: '(/[^']+)'", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    assert any(a.endswith("swagger-ui.css") for a in assets), assets
    for asset in assets:
        got = await client.get(asset)
        assert got.status_code == 200, asset
        assert len(got.content) > 0
    js = (await client.get("/static/docs/swagger-ui-bundle.js")).headers["content-type"]
    assert "javascript" in js


async def test_oauth2_redirect_page(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs/oauth2-redirect")
    assert r.status_code == 200
    assert "http://" not in r.text
    assert "https://" not in r.text


async def test_no_redoc(client: httpx.AsyncClient) -> None:
    # ReDoc would load from a CDN; it is not served.
    assert (await client.get("/redoc")).status_code == 404
