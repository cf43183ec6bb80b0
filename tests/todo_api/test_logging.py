"""todo_api's logs: an access line per request in development, none by default in
production, and never a search text."""

from __future__ import annotations

import logging

import pytest
from asgi_lifespan import LifespanManager

from neondb.logs import ACCESS_LOGGER
from todo_api.app import create_app
from todo_api.testing import app_settings, auth_headers, make_client


@pytest.mark.parametrize(
    ("env", "lines"), [("development", 2), ("production", 0)], ids=["development", "production"]
)
async def test_access_log_by_environment(
    neondb_schema_url: str, caplog: pytest.LogCaptureFixture, env: str, lines: int
) -> None:
    app = create_app(app_settings(neondb_schema_url, app_env=env))
    with caplog.at_level(logging.DEBUG):
        async with LifespanManager(app), make_client(app) as client:
            r = await client.get(
                "/api/tasks?q=diagnosis-of-alice&limit=5", headers=auth_headers("alice")
            )
            assert r.status_code == 200
            assert (await client.get("/health")).status_code == 200
    access = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(access) == lines
    if lines:
        assert access[0].startswith("GET /api/tasks?q&limit 200 ")
    server_side = [r for r in caplog.records if r.name != "httpx"]  # httpx is the test's client
    assert not [r for r in server_side if "diagnosis-of-alice" in r.getMessage()]


def test_access_log_can_be_forced(neondb_schema_url: str) -> None:
    on = app_settings(neondb_schema_url, app_env="production", app_access_log=True)
    off = app_settings(neondb_schema_url, app_access_log=False)
    assert (on.access_log, off.access_log) == (True, False)
