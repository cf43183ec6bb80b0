"""FastAPI integration: lifespan, session dependencies, health routes, error handlers.

    neon = NeonDB()                                   # settings from the environment
    app = FastAPI(lifespan=neon.lifespan)
    neon.install(app, admin=require_admin)            # /health, /health/db, 503 handlers

    @app.get("/things")
    async def things(session: ReadSession) -> list[str]: ...

Session dependencies are `Annotated` aliases. Their exit code (COMMIT) runs before the
response is sent (`scope="function"`), so a write is acknowledged only once committed.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from sqlalchemy.exc import SQLAlchemyError

from neondb.extras import missing_extra

try:
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import BaseModel
except ImportError as e:
    raise missing_extra("fastapi", "neondb.fastapi (NeonDB and the session dependencies)") from e

from neondb.body_limit import BodyLimitMiddleware
from neondb.database import Database
from neondb.errors import NeonDBError, classify, retry_after_header
from neondb.health import database_health
from neondb.logs import RequestContextMiddleware
from neondb.metrics import HttpMetricsMiddleware
from neondb.migrations import Migrations
from neondb.replicas import ReadRoutingMiddleware, Scope, authorization_key
from neondb.session import NeonSession
from neondb.settings import DatabaseSettings

__all__ = [
    "AutocommitSession",
    "DbSession",
    "ErrorMessage",
    "NeonDB",
    "ReadSession",
    "get_database",
]

log = logging.getLogger("neondb")


def get_database(request: Request) -> Database:
    db = getattr(request.app.state, "neondb", None)
    if not isinstance(db, Database):
        raise RuntimeError("neondb is not installed on this app: use NeonDB(...).lifespan")
    return db


async def _transaction(request: Request) -> AsyncIterator[NeonSession]:
    async with get_database(request).session() as session:
        yield session


async def _autocommit(request: Request) -> AsyncIterator[NeonSession]:
    async with get_database(request).autocommit() as session:
        yield session


async def _read(request: Request) -> AsyncIterator[NeonSession]:
    async with get_database(request).read_session() as session:
        yield session


DbSession = Annotated[NeonSession, Depends(_transaction, scope="function")]
"""A transaction: committed before the response is sent, rolled back on an exception."""
AutocommitSession = Annotated[NeonSession, Depends(_autocommit, scope="function")]
"""Each statement commits on its own: one round trip for a one-statement route."""
ReadSession = Annotated[NeonSession, Depends(_read, scope="function")]
"""Reads only: the replica when configured; retried safely on a lost connection."""


class ErrorMessage(BaseModel):
    """The body of an error response: `{"detail": "..."}` (FastAPI's shape)."""

    detail: str


def _error_response(exc: NeonDBError) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.public_detail},
        status_code=exc.status_code,
        headers={"Retry-After": retry_after_header(exc)},
    )


async def _handle_neondb_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NeonDBError)
    # Class and message only: neither carries SQL parameters nor credentials.
    log.warning("%s %s -> %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return _error_response(exc)


async def _handle_sqlalchemy_error(request: Request, exc: Exception) -> Response:
    """A database error raised outside neondb's sessions (an app's own engine use, say):
    mapped the same way when it is an outage or a timeout; otherwise a bug, so a 500."""
    mapped = classify(exc)
    if mapped is None:
        raise exc
    return await _handle_neondb_error(request, mapped)


def _warn_about_event_handlers(app: FastAPI) -> None:
    handlers = [*app.router.on_startup, *app.router.on_shutdown]
    if handlers:
        names = ", ".join(getattr(h, "__name__", repr(h)) for h in handlers)
        log.warning(
            "FastAPI will not run the @app.on_event handlers of this app (%s) because it "
            "uses NeonDB.lifespan: move that code into a lifespan that wraps neon.lifespan "
            "(see the README, 'Your own start-up code')",
            names,
        )


class NeonDB:
    """Wires a `Database` into a FastAPI app."""

    def __init__(
        self,
        settings: DatabaseSettings | None = None,
        *,
        migrations: Migrations | None = None,
        name: str = "neondb",
        client_key: Callable[[Scope], int | None] = authorization_key,
    ) -> None:
        """`client_key`: who a request's client is, for read-your-writes with a replica
        (see `neondb.replicas`); by default its Authorization header."""
        self.settings = settings or DatabaseSettings()
        self.db = Database(self.settings, name=name)
        self.migrations = migrations
        self.client_key = client_key

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Start (waiting for a waking compute), migrate if asked, freeze what start-up
        made out of the garbage collector's sight, serve, dispose.

        FastAPI runs no `@app.on_event("startup")` handler once a lifespan is set: to run
        your own start-up code, wrap this one (`async with neon.lifespan(app): ...; yield`).
        """
        _warn_about_event_handlers(app)
        try:
            await self.db.start()
        except NeonDBError as e:
            # One line that says what to fix; the chained traceback only when debugging.
            log.error("start-up failed: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))
            raise
        try:
            if self.migrations is not None and self.settings.db_migrate_on_start:
                await self.migrations.upgrade(self.db)
            app.state.neondb = self.db
            # What start-up made (modules, models, routes, compiled statements, the pool)
            # lives as long as the process: out of the garbage collector's sight, the
            # collections a request's allocations trigger no longer walk it (they were
            # about a tenth of a simple route's CPU, and a 1 MiB body of nested JSON arrays,
            # whose parse triggers several full collections, held the loop over a second).
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()
        finally:
            await self.db.stop()

    def install(
        self,
        app: FastAPI,
        *,
        admin: Callable[..., Any] | None = None,
        metrics: bool = True,
        tags: Sequence[str] = ("health",),
        access_log: bool = False,
        max_body_bytes: int | None = None,
    ) -> None:
        """Add the error handlers, the request-id middleware (`X-Request-ID` echoed or made,
        on every log line; an access line per request with `access_log`), and the routes
        `/health`, `/health/db`, `/metrics`, and `/admin/db/pool-stats` when an `admin`
        dependency is given. With `max_body_bytes`, a larger request body is a 413, refused
        while it is read (`BodyLimitMiddleware`, inside the request-id middleware so the 413
        carries an id and an access line).

        Middleware the app adds before this call runs inside these two."""
        if max_body_bytes is not None:
            app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
        app.add_middleware(RequestContextMiddleware, access_log=access_log)
        if self.settings.database_read_url is not None:
            app.add_middleware(ReadRoutingMiddleware, client_key=self.client_key)
        if metrics:
            app.add_middleware(HttpMetricsMiddleware)  # outermost: it times the whole request
        app.add_exception_handler(NeonDBError, _handle_neondb_error)
        app.add_exception_handler(SQLAlchemyError, _handle_sqlalchemy_error)
        app.include_router(
            health_router(
                admin=admin, metrics=metrics, tags=list(tags), max_body_bytes=max_body_bytes
            )
        )


def health_router(
    *,
    admin: Callable[..., Any] | Callable[..., Awaitable[Any]] | None = None,
    metrics: bool = True,
    tags: list[str] | None = None,
    max_body_bytes: int | None = None,
) -> APIRouter:
    """The health, metrics and admin routes. Their OpenAPI entries list every status they
    answer: the 413 when a body limit is installed, the admin dependency's 401 and 403."""
    responses: dict[int | str, dict[str, Any]] = {}
    if max_body_bytes is not None:
        responses[413] = {
            "model": ErrorMessage,
            "description": f"request body over {max_body_bytes} bytes",
        }
    router = APIRouter(tags=list(tags or ["health"]), responses=responses)

    @router.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers. Touches no database."""
        return {"status": "ok"}

    @router.get(
        "/health/db",
        responses={503: {"description": "database unreachable"}},
    )
    async def health_db(request: Request) -> JSONResponse:
        """Readiness: a real `SELECT 1` per engine, with latency, pool figures and breaker
        states. 200 while the primary answers, also when its pool is busy (`busy: true`,
        checked on a connection outside the pool); 503 with Retry-After when it does not."""
        body = await database_health(get_database(request))
        status = 200 if body["status"] == "healthy" else 503
        wait = max(2.0, body["breaker"]["retry_after_s"])  # the cool-down, when open
        headers = {} if status == 200 else {"Retry-After": str(math.ceil(wait))}
        return JSONResponse(body, status_code=status, headers=headers)

    if admin is not None:

        @router.get(
            "/admin/db/pool-stats",
            dependencies=[Depends(admin)],
            responses={
                401: {"model": ErrorMessage, "description": "missing or invalid credentials"},
                403: {"model": ErrorMessage, "description": "not an administrator"},
            },
        )
        async def pool_stats(request: Request) -> dict[str, Any]:
            """Pool and breaker figures (admin only)."""
            db = get_database(request)
            return {
                "pools": db.pool_stats(),
                "breaker": {
                    "state": db.breaker.state,
                    "consecutive_failures": db.breaker.consecutive_failures,
                },
                "breakers": {
                    role: {"state": b.state, "consecutive_failures": b.consecutive_failures}
                    for role, b in db.breakers().items()
                },
                "connections_opened": db.connections_opened,
                "driver": db.driver,
                "behind_pooler": db.behind_pooler(),
                "serverless": db.settings.db_serverless,
            }

    if metrics:

        @router.get("/metrics", response_class=Response)
        async def metrics_route() -> Response:
            """Prometheus text format."""
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
