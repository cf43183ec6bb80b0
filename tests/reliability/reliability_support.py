"""The app under test (the Todo API) and an HTTP client for it.

`build_app(settings)` is `todo_api.app.create_app(settings)` plus `add_probe_routes`: a few
routes the faults need (pg_sleep in a transaction or alone, settings, the backend's pid),
written with neondb's own session dependencies, as any app on neondb would be. They also
cover `DbSession` (explicit transactions), which the Todo API's routes do not use.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text

from neondb import AutocommitSession, Database, DbSession, ReadSession
from todo_api.app import create_app
from todo_api.auth import issue_token
from todo_api.settings import AppSettings

AUTH_SECRET = "reliability-tests-secret-0123456789abcdef"
USER = "reliability-user"


def make_settings(url: str, **overrides: Any) -> AppSettings:
    """Settings for a test: explicit values, no `.env`, short waits."""
    values: dict[str, Any] = {
        "database_url": url,
        "auth_secret": AUTH_SECRET,
        "db_pool_min": 1,
        "db_pool_max": 5,
        "db_pool_timeout_s": 5.0,
        "db_connect_timeout_s": 2.0,
        "db_retry_attempts": 3,
        "db_retry_backoff_s": 0.05,
        "db_breaker_failures": 5,
        "db_breaker_reset_s": 1.0,
        "db_statement_timeout_s": 5.0,
        "db_startup_timeout_s": 10.0,
        "db_migrate_on_start": True,
        # One user drives the whole pool here (the faults are about the pool, not fairness):
        # no per-user share, or the excess would be 429s instead of what the faults cause.
        "app_user_max_concurrency": 0,
    }
    values.update(overrides)
    return AppSettings(_env_file=None, **values)  # type: ignore[call-arg]


def auth_headers(sub: str = USER) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(AUTH_SECRET, sub)}"}


def build_app(settings: AppSettings) -> FastAPI:
    app = create_app(settings)
    add_probe_routes(app)
    return app


def database_of(app: FastAPI) -> Database:
    db = app.state.neondb
    assert isinstance(db, Database)
    return db


# probes -------------------------------------------------------------------------------------


def add_probe_routes(app: FastAPI) -> None:
    """Routes for the faults, built on neondb's session dependencies only."""

    @app.get("/_probe/sleep")
    async def sleep_tx(session: DbSession, s: float = 1.0) -> dict[str, str]:
        """pg_sleep inside an explicit transaction (BEGIN ... COMMIT)."""
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": s})
        return {"slept": "tx"}

    @app.get("/_probe/sleep-autocommit")
    async def sleep_auto(session: AutocommitSession, s: float = 1.0) -> dict[str, str]:
        """pg_sleep as one autocommit statement (no BEGIN)."""
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": s})
        return {"slept": "autocommit"}

    @app.get("/_probe/sleep-unbounded")
    async def sleep_unbounded(session: DbSession, s: float = 1.0) -> dict[str, str]:
        """A statement the server never cancels (its timeout switched off for this
        transaction): only the client-side backstop can end it."""
        await session.execute(text("SET LOCAL statement_timeout = 0"))
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": s})
        return {"slept": "unbounded"}

    @app.get("/_probe/one")
    async def one(session: ReadSession) -> dict[str, int]:
        """One statement, one round trip."""
        return {"one": int((await session.execute(text("SELECT 1"))).scalar_one())}

    @app.get("/_probe/recovery")
    async def recovery(session: ReadSession) -> dict[str, bool]:
        """Where reads go: true on a standby (the replica), false on the primary."""
        return {
            "in_recovery": bool(
                (await session.execute(text("SELECT pg_is_in_recovery()"))).scalar_one()
            )
        }

    @app.get("/_probe/backend")
    async def backend(session: ReadSession) -> dict[str, Any]:
        row = (
            await session.execute(
                text("SELECT pg_backend_pid(), current_setting('statement_timeout')")
            )
        ).one()
        return {"pid": row[0], "statement_timeout": row[1]}

    @app.get("/_probe/backend-tx")
    async def backend_tx(session: DbSession) -> dict[str, Any]:
        row = (
            await session.execute(
                text("SELECT pg_backend_pid(), current_setting('statement_timeout')")
            )
        ).one()
        return {"pid": row[0], "statement_timeout": row[1]}

    @app.post("/_probe/setting")
    async def set_setting(
        session: AutocommitSession, name: str, value: str, local: bool = False
    ) -> dict[str, Any]:
        """set_config(name, value, is_local) as one autocommit statement."""
        got = await session.execute(
            text("SELECT set_config(:n, :v, :l)"), {"n": name, "v": value, "l": local}
        )
        return {"set": got.scalar_one()}

    @app.post("/_probe/setting-tx")
    async def set_setting_tx(
        session: DbSession, name: str, value: str, local: bool = True
    ) -> dict[str, Any]:
        """set_config inside an explicit transaction, read back in the same transaction."""
        await session.execute(
            text("SELECT set_config(:n, :v, :l)"), {"n": name, "v": value, "l": local}
        )
        seen = await session.execute(text("SELECT current_setting(:n, true)"), {"n": name})
        return {"seen_inside": seen.scalar_one()}

    @app.get("/_probe/setting")
    async def get_setting(session: ReadSession, name: str) -> dict[str, Any]:
        got = await session.execute(text("SELECT current_setting(:n, true)"), {"n": name})
        return {"value": got.scalar_one()}


# the client ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request as the client saw it."""

    method: str
    path: str
    started: float  # time.monotonic()
    elapsed_s: float
    status: int | None  # None: no answer within the client's bound (a hang)
    retry_after: str | None = None
    body: Any = None
    title: str | None = None
    raw: bytes = field(default=b"", repr=False)
    error: str | None = None  # the server-side traceback of a 500, to say why


class _Recorder:
    """ASGI wrapper keeping the traceback of every exception the app let out (a 500)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.errors: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as e:
            self.errors.append("".join(traceback.format_exception(e)))
            raise


class Client:
    """httpx over ASGI, the app's lifespan run around it. `call()` bounds every request
    and records what the client saw."""

    def __init__(self, app: FastAPI, http: httpx.AsyncClient, recorder: _Recorder) -> None:
        self.app = app
        self.http = http
        self.recorder = recorder
        self.headers = auth_headers()

    @property
    def db(self) -> Database:
        return database_of(self.app)

    async def call(
        self, method: str, path: str, *, bound_s: float = 30.0, title: str | None = None, **kw: Any
    ) -> Outcome:
        started = time.monotonic()
        try:
            async with asyncio.timeout(bound_s):
                r = await self.http.request(method, path, headers=self.headers, **kw)
        except TimeoutError:
            return Outcome(method, path, started, time.monotonic() - started, None, title=title)
        try:
            body = r.json()
        except json.JSONDecodeError:
            body = None
        error = None
        if r.status_code == 500 and self.recorder.errors:
            error = self.recorder.errors[-1]
        return Outcome(
            method,
            path,
            started,
            time.monotonic() - started,
            r.status_code,
            r.headers.get("retry-after"),
            body,
            title,
            r.content,
            error,
        )


@asynccontextmanager
async def serve(app: FastAPI, *, startup_s: float = 30.0) -> AsyncIterator[Client]:
    """Start the app (lifespan: neondb waits for the database, migrates), yield a client."""
    async with LifespanManager(app, startup_timeout=startup_s, shutdown_timeout=30) as manager:
        recorder = _Recorder(manager.app)
        transport = httpx.ASGITransport(app=recorder, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield Client(app, http, recorder)


def assert_unavailable(o: Outcome, status: int = 503) -> None:
    """A fault answered the way DESIGN.md principle 4 says: the status, Retry-After in whole
    seconds, a one-line JSON detail with no SQL, stack trace or credential."""
    assert o.status == status, o
    assert o.retry_after is not None, o
    assert o.retry_after.isdigit(), o
    assert int(o.retry_after) >= 1, o
    assert isinstance(o.body, dict), o
    assert set(o.body) == {"detail"}, o
    detail = o.body["detail"]
    assert isinstance(detail, str), o
    assert detail, o
    assert "\n" not in detail, o
    lowered = o.raw.decode(errors="replace").lower()
    for leak in ("traceback", "select", "insert", "password", "postgresql://", "rel_user_"):
        assert leak not in lowered, o


# metrics ------------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition, by name and exact label set (0 when
    absent, as a counter that never moved)."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        got = sorted(re.findall(r'[a-zA-Z_]+="(?:[^"\\]|\\.)*"', m.group(2) or ""))
        if got == want:
            return float(m.group(3))
    return 0.0


async def scrape(client: Client) -> str:
    """GET /metrics."""
    r = await client.http.get("/metrics")
    assert r.status_code == 200, r.text
    return r.text
