"""`neondb` alone: the three routes on NeonDB's sessions, without todo_api's auth and checks.

The README's adoption example grown to the bench's routes: `NeonDB()` from the environment
(`DATABASE_URL`, `DB_*`), `neon.install(app)`, `ReadSession` for the reads and
`AutocommitSession` for the create, SQLAlchemy Core statements (the ones todo_api builds).
Compared with the FastAPI ceiling without auth, it shows the layer's own cost; compared with
todo_api, what the app adds on top.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY

from bench.baselines.common import COLUMNS, USER_HEADER, TaskIn, TaskOut, TaskPageOut
from neondb import AutocommitSession, NeonDB, ReadSession

__all__ = ["create_app"]

tasks = Table(
    "tasks",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("user_id", String(255)),
    Column("title", String(200)),
    Column("description", String(1000)),
    Column("completed", Boolean),
    Column("priority", String(10)),
    Column("tags", ARRAY(Text)),
    Column("due_date", DateTime(timezone=True)),
    Column("recurring", Boolean),
    Column("recurring_pattern", String(10)),
    Column("created_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
)
PUBLIC = [tasks.c[name] for name in COLUMNS]


def _task(row: Any) -> TaskOut:
    return TaskOut.model_validate(dict(row._mapping))


async def _user(request: Request) -> str:
    return request.headers[USER_HEADER]


User = Annotated[str, Depends(_user)]


def create_app() -> FastAPI:
    neon = NeonDB()
    app = FastAPI(lifespan=neon.lifespan, redirect_slashes=False)
    neon.install(app)

    @app.get("/api/tasks/{task_id}")
    async def get_task(task_id: int, user: User, session: ReadSession) -> TaskOut:
        stmt = select(*PUBLIC).where(tasks.c.id == task_id, tasks.c.user_id == user)
        row = (await session.execute(stmt)).one_or_none()
        if row is None:
            raise HTTPException(404, "Task not found")
        return _task(row)

    @app.get("/api/tasks")
    async def list_tasks(
        user: User,
        session: ReadSession,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> TaskPageOut:
        stmt = (
            select(*PUBLIC, func.count().over().label("total"))
            .where(tasks.c.user_id == user)
            .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        rows = (await session.execute(stmt)).all()
        return TaskPageOut(items=[_task(r) for r in rows], total=rows[0].total if rows else 0)

    @app.post("/api/tasks", status_code=201)
    async def create_task(body: TaskIn, user: User, session: AutocommitSession) -> TaskOut:
        stmt = insert(tasks).values(user_id=user, **body.model_dump()).returning(*PUBLIC)
        return _task((await session.execute(stmt)).one())

    return app
