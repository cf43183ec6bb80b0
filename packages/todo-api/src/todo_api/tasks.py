"""`/api/tasks`: a user's tasks.

Every route is one SQL statement in an autocommit (write) or read session, so one round
trip; every statement filters by the authenticated user. See docs/design.md, "Few round trips".

A list page counts its matches only up to `TOTAL_CAP` (then `total_capped`), so a user with
many tasks does not pay for reading all of them on every page; `q` is served by the pg_trgm
indexes (a pattern of 3 characters or more narrows the search; a shorter one reads the
caller's own tasks, through their index).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    Table,
    TextClause,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError

from neondb import AutocommitSession, ReadSession
from neondb.errors import sqlstate_of
from todo_api.auth import CurrentUser
from todo_api.fair_share import PER_USER
from todo_api.models import (
    MAX_ID,
    TASKS,
    Priority,
    SearchText,
    Tag,
    TaskCompletion,
    TaskCreate,
    TaskPage,
    TaskPublic,
    TaskUpdate,
    UtcDatetime,
)
from todo_api.responses import BAD_BODY, COMMON_RESPONSES, NOT_FOUND, not_found
from todo_api.strict import reject_unknown_query

__all__ = [
    "TOTAL_CAP",
    "TaskFilters",
    "complete_statement",
    "list_query",
    "list_statement",
    "router",
]

router = APIRouter(
    prefix="/api/tasks",
    tags=["tasks"],
    responses=COMMON_RESPONSES,
    dependencies=[Depends(reject_unknown_query), PER_USER],
)

tasks: Table = TASKS
PUBLIC = [c for c in tasks.c if c.name not in ("user_id", "source_task_id")]
NEWEST_FIRST = (tasks.c.created_at.desc(), tasks.c.id.desc())

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="task id")]
Status = Literal["all", "pending", "completed"]


# Statements of the hottest routes are built once; requests pass their values.
GET_ONE = select(*PUBLIC).where(tasks.c.id == bindparam("id"), tasks.c.user_id == bindparam("uid"))
CREATE = insert(tasks).returning(*PUBLIC)
_TASK_PUBLIC = TypeAdapter(TaskPublic)


def _public(row: Any) -> TaskPublic:
    # Validated here, once: FastAPI passes a TaskPublic through its response check as is.
    return _TASK_PUBLIC.validate_python(row._mapping)


def like_pattern(q: str) -> str:
    """`q` as a literal ILIKE substring: `\\`, `%` and `_` lose their meaning."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True)
class TaskFilters:
    status: Status = "all"
    priority: Priority | None = None
    tag: str | None = None
    q: str | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None

    def shape(self) -> tuple[bool, ...]:
        """Which conditions apply: the statement's structure, whatever their values."""
        return (
            self.status != "all",
            self.priority is not None,
            self.tag is not None,
            bool(self.q),
            self.due_after is not None,
            self.due_before is not None,
        )

    def values(self, user_id: str) -> dict[str, Any]:
        """The bound values of the conditions `where` names."""
        out: dict[str, Any] = {"uid": user_id}
        if self.status != "all":
            out["completed"] = self.status == "completed"
        if self.priority is not None:
            out["priority"] = self.priority
        if self.tag is not None:
            out["tag"] = [self.tag]
        if self.q:
            out["pattern"] = like_pattern(self.q)
        if self.due_after is not None:
            out["due_after"] = self.due_after
        if self.due_before is not None:
            out["due_before"] = self.due_before
        return out

    def where(self) -> list[ColumnElement[bool]]:
        """The conditions, as bound parameters (values from `values`)."""
        c = tasks.c
        status, priority, tag, q, due_after, due_before = self.shape()
        out: list[ColumnElement[bool]] = [c.user_id == bindparam("uid")]
        if status:
            out.append(c.completed == bindparam("completed"))
        if priority:
            out.append(c.priority == bindparam("priority"))
        if tag:
            # tags @> ARRAY[tag]: GIN index
            out.append(c.tags.contains(bindparam("tag", type_=c.tags.type)))
        if q:
            pattern = bindparam("pattern", type_=c.title.type)
            out.append(
                or_(c.title.ilike(pattern, escape="\\"), c.description.ilike(pattern, escape="\\"))
            )
        if due_after:
            out.append(c.due_date >= bindparam("due_after"))
        if due_before:
            out.append(c.due_date < bindparam("due_before"))
        return out


TOTAL_CAP = 10_000
"""A page's `total` is exact up to this many matches; beyond, `total_capped` says more."""

# One statement per combination of filters (64 at most), its values bound per request:
# building the statement (subqueries, column proxies) and its cache key cost more than
# running it, and a statement kept memoizes its cache key.
_LIST_SHAPES: dict[tuple[bool, ...], Select[Any]] = {}


def _list_shape(filters: TaskFilters) -> Select[Any]:
    shape = filters.shape()
    stmt = _LIST_SHAPES.get(shape)
    if stmt is None:
        where = filters.where()
        matching = (
            select(literal(1))
            .where(*where)
            .limit(bindparam("cap", type_=Integer))
            .subquery("matching")
        )
        counted = select(func.count().label("total")).select_from(matching).subquery("counted")
        page = (
            select(*PUBLIC)
            .where(*where)
            .order_by(*NEWEST_FIRST)
            .limit(bindparam("page_limit", type_=Integer))
            # Offsets go up to 2^63-1 (MAX_ID): bigint, or asyncpg refuses past int32.
            .offset(bindparam("page_offset", type_=BigInteger))
        ).subquery("page")
        stmt = (
            select(counted.c.total, *page.c)
            .select_from(counted.outerjoin(page, true()))
            .order_by(page.c.created_at.desc(), page.c.id.desc())
        )
        _LIST_SHAPES[shape] = stmt
    return stmt


def list_query(
    user_id: str, filters: TaskFilters, limit: int, offset: int, *, total_cap: int = TOTAL_CAP
) -> tuple[Select[Any], dict[str, Any]]:
    """`list_statement`'s statement (shared by every request with the same filters) and the
    values to execute it with."""
    values = filters.values(user_id)
    values.update(cap=total_cap + 1, page_limit=limit, page_offset=offset)
    return _list_shape(filters), values


def list_statement(
    user_id: str, filters: TaskFilters, limit: int, offset: int, *, total_cap: int = TOTAL_CAP
) -> Select[Any]:
    """One page, newest first, each row carrying `total`: the matching rows counted up to
    `total_cap + 1` (so the count stops early and says whether it did). A page past the end
    is still one row, with `total` and NULL task columns: one statement in every case.
    With its values bound; the route executes `list_query`'s pair, the same statement."""
    stmt, values = list_query(user_id, filters, limit, offset, total_cap=total_cap)
    return stmt.params(values)


# Completing and creating the next occurrence is one statement: the conditional UPDATE
# (`NOT completed`, so concurrent or repeated calls complete it once) feeds the INSERT. The
# next occurrence records its source; the unique index on `source_task_id` makes reopening
# (`PATCH {"completed": false}`) and completing again insert nothing the second time.
# Dates move in UTC: +1 day, +7 days, or +1 calendar month (PostgreSQL clamps Jan 31 to
# the end of February). A next date past year 9999 (beyond Python's datetime) ends the series.
_COLUMNS = ", ".join(c.name for c in PUBLIC)
_COMPLETE_SQL = f"""
WITH done AS (
    UPDATE tasks SET completed = true, updated_at = now()
    WHERE id = :id AND user_id = :user_id AND NOT completed
    RETURNING *
), next AS (
    INSERT INTO tasks (user_id, title, description, priority, tags, due_date,
                       recurring, recurring_pattern, source_task_id)
    SELECT d.user_id, d.title, d.description, d.priority, d.tags, n.due_date,
           d.recurring, d.recurring_pattern, d.id
    FROM done AS d
    CROSS JOIN LATERAL (
        SELECT (d.due_date AT TIME ZONE 'UTC' + CASE d.recurring_pattern
                    WHEN 'daily' THEN interval '1 day'
                    WHEN 'weekly' THEN interval '7 days'
                    WHEN 'monthly' THEN interval '1 month'
                END) AT TIME ZONE 'UTC' AS due_date
    ) AS n
    WHERE d.recurring AND n.due_date IS NOT NULL
      AND n.due_date < timestamptz '10000-01-01 00:00:00+00'
    ON CONFLICT (source_task_id) DO NOTHING
    RETURNING *
)
SELECT false AS is_next, {_COLUMNS} FROM done
UNION ALL
SELECT true AS is_next, {_COLUMNS} FROM next
"""


def complete_statement(task_id: int, user_id: str) -> TextClause:
    return text(_COMPLETE_SQL).bindparams(id=task_id, user_id=user_id)


@router.post("", status_code=201, responses=BAD_BODY)
async def create_task(
    body: TaskCreate, user: CurrentUser, session: AutocommitSession
) -> TaskPublic:
    """Create a task (`title` 1 to 200 characters)."""
    values = body.model_dump()
    return _public((await session.execute(CREATE, {"user_id": user.id, **values})).one())


@router.get("")
async def list_tasks(
    user: CurrentUser,
    session: ReadSession,
    status: Annotated[Status, Query(description="all, pending or completed")] = "all",
    priority: Priority | None = None,
    tag: Annotated[Tag | None, Query(description="whole tag, case-sensitive")] = None,
    q: Annotated[
        SearchText | None,
        Query(description="literal, case-insensitive substring of title or description"),
    ] = None,
    due_before: Annotated[
        UtcDatetime | None, Query(description="due strictly before (ISO 8601 with zone)")
    ] = None,
    due_after: Annotated[
        UtcDatetime | None, Query(description="due at or after (ISO 8601 with zone)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> TaskPage:
    """The caller's tasks, newest first (created_at, then id, descending). `total` counts
    the matches up to 10,000; past that it is 10,000 and `total_capped` is true."""
    filters = TaskFilters(status, priority, tag, q, due_before, due_after)
    rows = (await session.execute(*list_query(user.id, filters, limit, offset))).all()
    counted = rows[0].total  # always one row, even past the end
    return TaskPage(
        items=[_public(r) for r in rows if r.id is not None],
        total=min(counted, TOTAL_CAP),
        total_capped=counted > TOTAL_CAP,
    )


@router.get("/{task_id}", responses=NOT_FOUND)
async def get_task(task_id: TaskId, user: CurrentUser, session: ReadSession) -> TaskPublic:
    row = (await session.execute(GET_ONE, {"id": task_id, "uid": user.id})).one_or_none()
    if row is None:
        raise not_found("Task")
    return _public(row)


@router.patch("/{task_id}", responses=NOT_FOUND | BAD_BODY)
async def update_task(
    task_id: TaskId,
    body: Annotated[TaskUpdate, Body()],
    user: CurrentUser,
    session: AutocommitSession,
) -> TaskPublic:
    """Change the fields sent; `updated_at` advances. `null` clears `description`,
    `due_date` or `recurring_pattern`. Setting `completed` here creates no next occurrence
    (that is `POST /api/tasks/{id}/complete`)."""
    changes = body.model_dump(exclude_unset=True)
    mine = and_(tasks.c.id == task_id, tasks.c.user_id == user.id)
    if not changes:
        row = (await session.execute(select(*PUBLIC).where(mine))).one_or_none()
    else:
        stmt = update(tasks).where(mine).values(**changes, updated_at=func.now()).returning(*PUBLIC)
        try:
            row = (await session.execute(stmt)).one_or_none()
        except IntegrityError as e:
            # The final row must satisfy `NOT recurring OR recurring_pattern IS NOT NULL`,
            # which depends on the stored row: the CHECK constraint decides, in the same
            # statement. Other violations go to the app's generic 422 handler.
            if sqlstate_of(e) == "23514" and '"ck_tasks_recurring"' in str(e.orig):
                raise RequestValidationError(
                    [
                        {
                            "type": "value_error",
                            "loc": ("body", "recurring_pattern"),
                            "msg": "recurring_pattern is required when recurring is true",
                            "input": changes.get("recurring_pattern"),
                        }
                    ]
                ) from None
            raise
    if row is None:
        raise not_found("Task")
    return _public(row)


@router.delete("/{task_id}", status_code=204, response_class=Response, responses=NOT_FOUND)
async def delete_task(task_id: TaskId, user: CurrentUser, session: AutocommitSession) -> Response:
    stmt = (
        delete(tasks).where(tasks.c.id == task_id, tasks.c.user_id == user.id).returning(tasks.c.id)
    )
    if (await session.execute(stmt)).one_or_none() is None:
        raise not_found("Task")
    return Response(status_code=204)


@router.post("/{task_id}/complete", responses=NOT_FOUND)
async def complete_task(
    task_id: TaskId, user: CurrentUser, session: AutocommitSession
) -> TaskCompletion:
    """Mark the task completed. A recurring task with a due date gets its next occurrence
    (daily +1 day, weekly +7 days, monthly +1 calendar month, in UTC) in the same statement.
    Completing a completed task changes nothing and returns `next: null`; so does completing
    a reopened occurrence that already has its next one (`next: null`, no duplicate)."""
    rows = (await session.execute(complete_statement(task_id, user.id))).all()
    done = next((r for r in rows if not r.is_next), None)
    if done is None:
        # Nothing was updated: already completed (return it as it is), or not there.
        stmt = select(*PUBLIC).where(tasks.c.id == task_id, tasks.c.user_id == user.id)
        done = (await session.execute(stmt)).one_or_none()
        if done is None:
            raise not_found("Task")
    following = next((r for r in rows if r.is_next), None)
    return TaskCompletion(
        task=_public(done), next=_public(following) if following is not None else None
    )
