"""The pattern most FastAPI + Neon guides publish, kept here as the benchmark's baseline.

Plain SQLAlchemy: `pool_pre_ping=True`, a session dependency that commits on exit, and
`refresh()` after a commit. Same two routes as todo_api: POST /api/tasks, GET /api/tasks/{id}.
Authentication is left out (it costs no round trip in either app).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import DateTime, Integer, String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class GuideTask(Base):
    __tablename__ = "guide_tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(String(200))
    completed: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )


def create_app() -> FastAPI:
    # The guide's URL form: postgresql+asyncpg://... with no sslmode (it would crash).
    engine = create_async_engine(
        os.environ["BASELINE_DATABASE_URL"], pool_size=5, max_overflow=10, pool_pre_ping=True
    )
    maker = async_sessionmaker(engine, expire_on_commit=False)

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with maker() as session:
            try:
                yield session
                await session.commit()
            except Exception:
                await session.rollback()
                raise

    Session = Annotated[AsyncSession, Depends(get_session)]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/tasks", status_code=201)
    async def create(body: dict[str, str], session: Session) -> dict[str, object]:
        task = GuideTask(user_id="bench", title=body["title"])
        session.add(task)
        await session.commit()
        await session.refresh(task)
        return {"id": task.id, "title": task.title, "completed": task.completed}

    @app.get("/api/tasks/{task_id}")
    async def read(task_id: int, session: Session) -> dict[str, object]:
        task = await session.get(GuideTask, task_id)
        if task is None or task.user_id != "bench":
            raise HTTPException(404, "Task not found")
        return {"id": task.id, "title": task.title, "completed": task.completed}

    return app
