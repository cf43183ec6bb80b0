"""The pattern most FastAPI + Neon guides publish, kept here as the benchmark's baseline.

Plain SQLAlchemy ORM: `pool_pre_ping=True`, the default pool (5 + 10 overflow), a session
dependency that commits on exit (reads too), `refresh()` after a commit, and a separate
`count()` for a page's total. No authentication (the caller comes from `X-User`).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.baselines.common import USER_HEADER, TaskIn, TaskOut, TaskPageOut
from bench.baselines.engine import engine
from bench.baselines.orm import task_class

__all__ = ["create_app"]

GuideTask = task_class(eager_defaults=False)


def create_app() -> FastAPI:
    db = engine(pool_pre_ping=True)
    maker = async_sessionmaker(db, expire_on_commit=False)

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with maker() as session:
            try:
                yield session
                await session.commit()
            except Exception:
                await session.rollback()
                raise

    async def user(request: Request) -> str:
        return request.headers[USER_HEADER]

    Session = Annotated[AsyncSession, Depends(get_session)]
    User = Annotated[str, Depends(user)]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await db.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/tasks", status_code=201)
    async def create(body: TaskIn, user: User, session: Session) -> TaskOut:
        task = GuideTask(user_id=user, **body.model_dump())
        session.add(task)
        await session.commit()
        await session.refresh(task)
        return TaskOut.model_validate(task, from_attributes=True)

    @app.get("/api/tasks/{task_id}")
    async def read(task_id: int, user: User, session: Session) -> TaskOut:
        task: Any = await session.get(GuideTask, task_id)
        if task is None or task.user_id != user:
            raise HTTPException(404, "Task not found")
        return TaskOut.model_validate(task, from_attributes=True)

    @app.get("/api/tasks")
    async def list_tasks(
        user: User,
        session: Session,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> TaskPageOut:
        stmt = (
            select(GuideTask)
            .where(GuideTask.user_id == user)
            .order_by(GuideTask.created_at.desc(), GuideTask.id.desc())
            .limit(limit)
            .offset(offset)
        )
        tasks = (await session.scalars(stmt)).all()
        count = select(func.count()).select_from(GuideTask).where(GuideTask.user_id == user)
        total = (await session.execute(count)).scalar_one()
        return TaskPageOut(
            items=[TaskOut.model_validate(t, from_attributes=True) for t in tasks], total=total
        )

    return app
