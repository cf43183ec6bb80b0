"""The raw ceiling: Starlette routes on an asyncpg pool, no validation layer, no auth.

What one uvicorn worker can do with these three statements when nothing stands between the
HTTP request and the driver. The pool releases connections without asyncpg's reset query
(`reset=` a no-op): the default runs `RESET ALL; UNLISTEN *; ...` on every release, a round
trip these routes do not need (they leave no session state behind).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.baselines.common import CREATE_SQL, GET_SQL, LIST_SQL, USER_HEADER, dsn, pool_size

__all__ = ["create_app"]


async def _no_reset(connection: Any) -> None:
    """Release without a query: these routes leave no session state behind."""


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _json(body: object, status: int = 200) -> Response:
    text = json.dumps(body, default=_default, separators=(",", ":"))
    return Response(text, status_code=status, media_type="application/json")


def _task(row: Any) -> dict[str, Any]:
    return dict(row.items())


def create_app() -> Starlette:
    pool: Any = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal pool
        size = pool_size()
        pool = await asyncpg.create_pool(dsn(), min_size=size, max_size=size, reset=_no_reset)
        yield
        await pool.close()

    async def get_task(request: Request) -> Response:
        try:
            task_id = int(request.path_params["task_id"])
        except ValueError:
            return _json({"detail": "bad id"}, 422)
        async with pool.acquire() as conn:
            row = await conn.fetchrow(GET_SQL, task_id, request.headers[USER_HEADER])
        if row is None:
            return _json({"detail": "Task not found"}, 404)
        return _json(_task(row))

    async def list_tasks(request: Request) -> Response:
        limit = int(request.query_params.get("limit", "20"))
        offset = int(request.query_params.get("offset", "0"))
        async with pool.acquire() as conn:
            rows = await conn.fetch(LIST_SQL, request.headers[USER_HEADER], limit, offset)
        total = rows[0]["total"] if rows else 0
        items = [{k: v for k, v in r.items() if k != "total"} for r in rows]
        return _json({"items": items, "total": total})

    async def create_task(request: Request) -> Response:
        body = json.loads(await request.body())
        args = (
            request.headers[USER_HEADER],
            body["title"],
            body.get("description"),
            body.get("priority", "medium"),
            body.get("tags", []),
            None,  # due_date: the bench sends none (parsing one is validation's job)
            body.get("recurring", False),
            body.get("recurring_pattern"),
        )
        async with pool.acquire() as conn:
            row = await conn.fetchrow(CREATE_SQL, *args)
        return _json(_task(row), 201)

    return Starlette(
        routes=[
            Route("/api/tasks/{task_id}", get_task, methods=["GET"]),
            Route("/api/tasks", list_tasks, methods=["GET"]),
            Route("/api/tasks", create_task, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
