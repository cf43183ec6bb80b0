"""Test helpers and pytest fixtures for todo_api (needs the dev extras: pytest, httpx,
asgi-lifespan). Import the fixtures into a conftest to use them::

    from todo_api.testing import api_app, auth_headers_fixture, client  # noqa: F401

* `app_settings(url, **overrides)`: settings for a test app on `url`: small pool
  (DB_POOL_MIN=1, DB_POOL_MAX=5), the fixed TEST_SECRET, the developer's `.env` ignored.
* `auth_headers(sub, admin=False)`: an `Authorization` header with a valid token.
* `make_client(app)`: httpx.AsyncClient over ASGITransport to an app whose lifespan runs.
* fixtures: `api_app` (the app, lifespan started, on a fresh schema from neondb's
  `neondb_schema_url`), `client` (a `make_client` to it), and `auth_headers` (the function
  above, as a fixture; defined as `auth_headers_fixture`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from todo_api.app import create_app
from todo_api.auth import issue_token
from todo_api.settings import AppSettings

__all__ = ["TEST_SECRET", "api_app", "app_settings", "auth_headers", "client", "make_client"]

TEST_SECRET = "todo-api-test-secret-" + "0123456789abcdef" * 3  # 32+ bytes, as HS256 wants


def app_settings(url: str, **overrides: Any) -> AppSettings:
    """Settings for a test app on `url`; never reads `.env`."""
    values: dict[str, Any] = {
        "database_url": url,
        "db_pool_min": 1,
        "db_pool_max": 5,
        "db_startup_timeout_s": 10,
        "auth_secret": TEST_SECRET,
    }
    values.update(overrides)
    return AppSettings(_env_file=None, **values)


def auth_headers(sub: str, admin: bool = False, *, ttl_s: int = 3600) -> dict[str, str]:
    """`Authorization: Bearer <token for sub>`, signed with TEST_SECRET."""
    return {"Authorization": f"Bearer {issue_token(TEST_SECRET, sub, admin=admin, ttl_s=ttl_s)}"}


def make_client(app: FastAPI) -> httpx.AsyncClient:
    """An httpx client calling `app` in-process (its lifespan must already run)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def api_app(neondb_schema_url: str) -> AsyncIterator[FastAPI]:
    app = create_app(app_settings(neondb_schema_url))
    # NeonDB keeps its state on `app.state`, so the app itself (not the manager's
    # lifespan-state wrapper) is what tests talk to.
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        yield app


@pytest.fixture
async def client(api_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(api_app) as c:
        yield c


@pytest.fixture(name="auth_headers")
def auth_headers_fixture() -> Callable[..., dict[str, str]]:
    return auth_headers
