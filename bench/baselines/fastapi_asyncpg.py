"""The FastAPI ceiling: FastAPI + raw asyncpg + pydantic models, with todo_api's HS256 check.

The same pieces todo_api pays for (routing, dependency injection, request and response
models, a bearer JWT verified with PyJWT) minus the database layer: statements go straight to
an asyncpg pool released without a reset query. `BENCH_AUTH=0` turns authentication off (the
caller comes from `X-User`), for comparing with the apps that have none.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
import jwt
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bench.baselines.common import (
    CREATE_SQL,
    GET_SQL,
    LIST_SQL,
    USER_HEADER,
    TaskIn,
    TaskOut,
    TaskPageOut,
    dsn,
    pool_size,
)

__all__ = ["create_app"]

_bearer = HTTPBearer(auto_error=False)


async def _no_reset(connection: Any) -> None:
    """Release without a query: these routes leave no session state behind."""


def _user_dependency() -> Any:
    if os.environ.get("BENCH_AUTH", "1") == "0":

        async def from_header(request: Request) -> str:
            return request.headers[USER_HEADER]

        return from_header
    secret = os.environ["BENCH_AUTH_SECRET"]

    async def from_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        # todo_api's check: HS256 only, `exp` and `sub` required, 30 s leeway.
        if credentials is None:
            raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
        try:
            claims = jwt.decode(
                credentials.credentials,
                secret,
                algorithms=["HS256"],
                leeway=30,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError:
            raise HTTPException(
                401, "Invalid or expired token", headers={"WWW-Authenticate": "Bearer"}
            ) from None
        return str(claims["sub"])

    return from_token


def create_app() -> FastAPI:
    pool: Any = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal pool
        size = pool_size()
        pool = await asyncpg.create_pool(dsn(), min_size=size, max_size=size, reset=_no_reset)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan, redirect_slashes=False)
    User = Annotated[str, Depends(_user_dependency())]

    @app.get("/api/tasks/{task_id}")
    async def get_task(task_id: int, user: User) -> TaskOut:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(GET_SQL, task_id, user)
        if row is None:
            raise HTTPException(404, "Task not found")
        return TaskOut.model_validate(dict(row.items()))

    @app.get("/api/tasks")
    async def list_tasks(
        user: User,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> TaskPageOut:
        async with pool.acquire() as conn:
            rows = await conn.fetch(LIST_SQL, user, limit, offset)
        total = rows[0]["total"] if rows else 0
        items = [TaskOut.model_validate(dict(r.items())) for r in rows]
        return TaskPageOut(items=items, total=total)

    @app.post("/api/tasks", status_code=201)
    async def create_task(body: TaskIn, user: User) -> TaskOut:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(CREATE_SQL, *body.args(user))
        return TaskOut.model_validate(dict(row.items()))

    return app
