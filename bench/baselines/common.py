"""What the baselines share: the SQL (the same statements todo_api runs), the caller, the
request and response shapes."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "COLUMNS",
    "CREATE_SQL",
    "GET_SQL",
    "LIST_SQL",
    "USER_HEADER",
    "TaskIn",
    "TaskOut",
    "TaskPageOut",
    "dsn",
    "pool_size",
]

USER_HEADER = "x-user"
"""Who the caller is, for the apps without authentication."""

COLUMNS = (
    "id",
    "title",
    "description",
    "completed",
    "priority",
    "tags",
    "due_date",
    "recurring",
    "recurring_pattern",
    "created_at",
    "updated_at",
)
_SELECT = ", ".join(COLUMNS)

# todo_api's statements, in asyncpg's parameter style.
GET_SQL = f"SELECT {_SELECT} FROM tasks WHERE id = $1 AND user_id = $2"
LIST_SQL = (
    f"SELECT {_SELECT}, count(*) OVER () AS total FROM tasks WHERE user_id = $1 "
    "ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
)
CREATE_SQL = (
    "INSERT INTO tasks (user_id, title, description, priority, tags, due_date, recurring, "
    f"recurring_pattern) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_SELECT}"
)


def dsn() -> str:
    return os.environ["BENCH_DSN"]


def pool_size() -> int:
    return int(os.environ.get("BENCH_POOL_SIZE", "20"))


class TaskIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    priority: str = "medium"
    tags: list[str] = Field(default_factory=list, max_length=20)
    due_date: datetime | None = None
    recurring: bool = False
    recurring_pattern: str | None = None

    def args(self, user_id: str) -> tuple[Any, ...]:
        return (
            user_id,
            self.title,
            self.description,
            self.priority,
            self.tags,
            self.due_date,
            self.recurring,
            self.recurring_pattern,
        )


class TaskOut(BaseModel):
    id: int
    title: str
    description: str | None
    completed: bool
    priority: str
    tags: list[str]
    due_date: datetime | None
    recurring: bool
    recurring_pattern: str | None
    created_at: datetime
    updated_at: datetime


class TaskPageOut(BaseModel):
    items: list[TaskOut]
    total: int
