"""The app under test and an HTTP client for it.

`build_app(settings)` returns the Todo API (`todo_api.app.create_app`) when it is installed,
else `fallback_app`: a small NeonDB app with the same HTTP contract for the routes these tests
use (tasks and messages), so the fault tests never depend on the Todo API being finished.
Either way `add_probe_routes` adds a few routes the faults need (pg_sleep, settings, backend
pid), written with neondb's own session dependencies.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from neondb import AutocommitSession, Database, DatabaseSettings, DbSession, NeonDB, ReadSession

AUTH_SECRET = "reliability-tests-secret-0123456789abcdef"
USER = "reliability-user"
TODO_API = importlib.util.find_spec("todo_api.app") is not None


def make_settings(url: str, **overrides: Any) -> DatabaseSettings:
    """Settings for a test: explicit values, no `.env`, short waits. The Todo API's settings
    class when the Todo API is used."""
    values: dict[str, Any] = {
        "database_url": url,
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
    }
    values.update(overrides)
    if TODO_API:
        from todo_api.settings import AppSettings

        return AppSettings(_env_file=None, auth_secret=AUTH_SECRET, **values)  # type: ignore[call-arg]
    return DatabaseSettings(_env_file=None, **values)  # type: ignore[call-arg]


def auth_headers(sub: str = USER) -> dict[str, str]:
    if not TODO_API:
        return {}
    from todo_api.auth import issue_token

    return {"Authorization": f"Bearer {issue_token(AUTH_SECRET, sub)}"}


def build_app(settings: DatabaseSettings) -> FastAPI:
    if TODO_API:
        from todo_api.app import create_app

        app = create_app(settings)  # type: ignore[arg-type]
    else:
        app = fallback_app(settings)
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


# the fallback app ---------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    title varchar(200) NOT NULL,
    description varchar(1000),
    completed boolean NOT NULL DEFAULT false,
    priority text NOT NULL DEFAULT 'medium',
    tags text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS conversations (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    title varchar(200),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS messages (
    id bigserial PRIMARY KEY,
    conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
    role text NOT NULL,
    content text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""
TASK_COLUMNS = "id, title, description, completed, priority, tags, created_at, updated_at"


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    priority: Literal["low", "medium", "high"] = "medium"
    tags: list[str] = []


class TaskPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    completed: bool | None = None
    priority: Literal["low", "medium", "high"] | None = None


class ConversationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(default=None, max_length=200)


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "system"]
    content: str = Field(min_length=1, max_length=32000)


def _row(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for key in ("created_at", "updated_at"):
        if key in out:
            out[key] = out[key].isoformat()
    return out


def fallback_app(settings: DatabaseSettings) -> FastAPI:
    """NeonDB + three tables, same contract as the Todo API for the routes used here."""
    neon = NeonDB(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with neon.lifespan(app):
            async with neon.db.session() as s:
                await s.execute(text("SELECT pg_advisory_xact_lock(42)"))
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        await s.execute(text(statement))
            yield

    app = FastAPI(lifespan=lifespan)
    neon.install(app)

    @app.post("/api/tasks", status_code=201)
    async def create_task(body: TaskIn, session: AutocommitSession) -> dict[str, Any]:
        row = (
            await session.execute(
                text(
                    "INSERT INTO tasks (user_id, title, description, priority, tags) "
                    f"VALUES (:u, :t, :d, :p, :g) RETURNING {TASK_COLUMNS}"
                ),
                {
                    "u": USER,
                    "t": body.title,
                    "d": body.description,
                    "p": body.priority,
                    "g": body.tags,
                },
            )
        ).one()
        return _row(row)

    @app.get("/api/tasks")
    async def list_tasks(
        session: ReadSession,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        rows = (
            await session.execute(
                text(
                    f"SELECT {TASK_COLUMNS}, count(*) OVER () AS total FROM tasks "
                    "WHERE user_id = :u ORDER BY created_at DESC, id DESC LIMIT :l OFFSET :o"
                ),
                {"u": USER, "l": limit, "o": offset},
            )
        ).all()
        items = [_row(r) for r in rows]
        total = items[0].pop("total") if items else 0
        for item in items:
            item.pop("total", None)
        return {"items": items, "total": total}

    async def _get(session: Any, task_id: int) -> dict[str, Any]:
        row = (
            await session.execute(
                text(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = :i AND user_id = :u"),
                {"i": task_id, "u": USER},
            )
        ).one_or_none()
        if row is None:
            raise HTTPException(404, "Task not found")
        return _row(row)

    @app.get("/api/tasks/{task_id}")
    async def get_task(task_id: int, session: ReadSession) -> dict[str, Any]:
        return await _get(session, task_id)

    @app.patch("/api/tasks/{task_id}")
    async def patch_task(
        task_id: int, body: TaskPatch, session: AutocommitSession
    ) -> dict[str, Any]:
        changes = body.model_dump(exclude_unset=True)
        sets = ", ".join(f"{k} = :{k}" for k in changes)
        row = (
            await session.execute(
                text(
                    f"UPDATE tasks SET {sets + ', ' if sets else ''}updated_at = clock_timestamp() "
                    f"WHERE id = :i AND user_id = :u RETURNING {TASK_COLUMNS}"
                ),
                {**changes, "i": task_id, "u": USER},
            )
        ).one_or_none()
        if row is None:
            raise HTTPException(404, "Task not found")
        return _row(row)

    @app.post("/api/tasks/{task_id}/complete")
    async def complete_task(task_id: int, session: DbSession) -> dict[str, Any]:
        task = await _get(session, task_id)
        row = (
            await session.execute(
                text(
                    "UPDATE tasks SET completed = true, updated_at = clock_timestamp() "
                    f"WHERE id = :i RETURNING {TASK_COLUMNS}"
                ),
                {"i": task["id"]},
            )
        ).one()
        return {"task": _row(row), "next": None}

    @app.delete("/api/tasks/{task_id}", status_code=204)
    async def delete_task(task_id: int, session: AutocommitSession) -> Response:
        gone = await session.execute(
            text("DELETE FROM tasks WHERE id = :i AND user_id = :u RETURNING id"),
            {"i": task_id, "u": USER},
        )
        if gone.one_or_none() is None:
            raise HTTPException(404, "Task not found")
        return Response(status_code=204)

    @app.post("/api/conversations", status_code=201)
    async def create_conversation(
        body: ConversationIn, session: AutocommitSession
    ) -> dict[str, Any]:
        row = (
            await session.execute(
                text(
                    "INSERT INTO conversations (user_id, title) VALUES (:u, :t) "
                    "RETURNING id, title, created_at, updated_at"
                ),
                {"u": USER, "t": body.title},
            )
        ).one()
        return _row(row)

    @app.post("/api/conversations/{conversation_id}/messages", status_code=201)
    async def post_message(
        conversation_id: int, body: MessageIn, session: DbSession
    ) -> dict[str, Any]:
        owner = await session.execute(
            text(
                "UPDATE conversations SET updated_at = clock_timestamp() "
                "WHERE id = :c AND user_id = :u RETURNING id"
            ),
            {"c": conversation_id, "u": USER},
        )
        if owner.one_or_none() is None:
            raise HTTPException(404, "Conversation not found")
        row = (
            await session.execute(
                text(
                    "INSERT INTO messages (conversation_id, role, content) VALUES (:c, :r, :t) "
                    "RETURNING id, conversation_id, role, content, created_at"
                ),
                {"c": conversation_id, "r": body.role, "t": body.content},
            )
        ).one()
        return _row(row)

    @app.get("/api/conversations/{conversation_id}/messages")
    async def list_messages(conversation_id: int, session: ReadSession) -> dict[str, Any]:
        rows = (
            await session.execute(
                text(
                    "SELECT m.id, m.conversation_id, m.role, m.content, m.created_at "
                    "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                    "WHERE c.id = :c AND c.user_id = :u ORDER BY m.created_at, m.id"
                ),
                {"c": conversation_id, "u": USER},
            )
        ).all()
        return {"items": [_row(r) for r in rows], "total": len(rows)}

    return app


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
