"""Tuned SQLAlchemy: FastAPI + the SQLAlchemy ORM configured the way its docs recommend for
throughput, no auth.

A fixed pool (`pool_size` = `BENCH_POOL_SIZE`, no overflow), no `pool_pre_ping`, reads in an
AUTOCOMMIT session (no BEGIN/ROLLBACK around a SELECT), `expire_on_commit=False`, and
`eager_defaults` so a create gets its server defaults from the INSERT's RETURNING instead of
a `refresh()`. Writes stay in a transaction (`add`, `commit`), as ORM code should.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.baselines.common import USER_HEADER, TaskIn, TaskOut, TaskPageOut, pool_size
from bench.baselines.engine import engine
from bench.baselines.orm import task_class

__all__ = ["create_app"]

Task = task_class(eager_defaults=True)


def create_app() -> FastAPI:
    writes = engine(pool_size=pool_size(), max_overflow=0, pool_pre_ping=False)
    reads = writes.execution_options(isolation_level="AUTOCOMMIT")  # same pool
    write_session = async_sessionmaker(writes, expire_on_commit=False)
    read_session = async_sessionmaker(reads, expire_on_commit=False)

    async def reader() -> AsyncIterator[AsyncSession]:
        async with read_session() as session:
            yield session

    async def writer() -> AsyncIterator[AsyncSession]:
        async with write_session() as session:
            yield session

    async def user(request: Request) -> str:
        return request.headers[USER_HEADER]

    Read = Annotated[AsyncSession, Depends(reader)]
    Write = Annotated[AsyncSession, Depends(writer)]
    User = Annotated[str, Depends(user)]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await writes.dispose()

    app = FastAPI(lifespan=lifespan, redirect_slashes=False)

    @app.get("/api/tasks/{task_id}")
    async def get_task(task_id: int, user: User, session: Read) -> TaskOut:
        task: Any = await session.get(Task, task_id)
        if task is None or task.user_id != user:
            raise HTTPException(404, "Task not found")
        return TaskOut.model_validate(task, from_attributes=True)

    @app.get("/api/tasks")
    async def list_tasks(
        user: User,
        session: Read,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> TaskPageOut:
        stmt = (
            select(Task, func.count().over().label("total"))
            .where(Task.user_id == user)
            .order_by(Task.created_at.desc(), Task.id.desc())
            .limit(limit)
            .offset(offset)
        )
        rows = (await session.execute(stmt)).all()
        return TaskPageOut(
            items=[TaskOut.model_validate(r[0], from_attributes=True) for r in rows],
            total=rows[0].total if rows else 0,
        )

    @app.post("/api/tasks", status_code=201)
    async def create_task(body: TaskIn, user: User, session: Write) -> TaskOut:
        task = Task(user_id=user, **body.model_dump())
        session.add(task)
        await session.commit()
        return TaskOut.model_validate(task, from_attributes=True)

    return app
