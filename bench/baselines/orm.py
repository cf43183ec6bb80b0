"""The `tasks` table as an ORM class, for the two SQLAlchemy baselines (each maps its own)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, FetchedValue, String, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["task_class"]


def task_class(*, eager_defaults: bool) -> type[Any]:
    """A fresh declarative base and `Task` mapped on `tasks` (schema from todo_api's
    migrations; nothing here creates it). Server-side defaults are marked so that the ORM
    knows to fetch them: with `eager_defaults` in the INSERT's RETURNING, else on refresh."""

    class Base(DeclarativeBase):
        pass

    class Task(Base):
        __tablename__ = "tasks"
        __mapper_args__ = {"eager_defaults": eager_defaults}  # noqa: RUF012 (SQLAlchemy's form)

        id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
        user_id: Mapped[str] = mapped_column(String(255))
        title: Mapped[str] = mapped_column(String(200))
        description: Mapped[str | None] = mapped_column(String(1000))
        completed: Mapped[bool] = mapped_column(Boolean, server_default=FetchedValue())
        priority: Mapped[str] = mapped_column(String(10), server_default=FetchedValue())
        tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=FetchedValue())
        due_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
        recurring: Mapped[bool] = mapped_column(Boolean, server_default=FetchedValue())
        recurring_pattern: Mapped[str | None] = mapped_column(String(10))
        created_at: Mapped[datetime] = mapped_column(
            DateTime(timezone=True), server_default=FetchedValue()
        )
        updated_at: Mapped[datetime] = mapped_column(
            DateTime(timezone=True), server_default=FetchedValue()
        )

    return Task
