"""The application factory: `todo_api.app:create_app` (uvicorn: `factory=True`).

Nothing happens at import. `create_app()` reads the settings (environment and `.env`) and
the auth keys; the lifespan connects (starting the embedded server when `DATABASE_URL` is
unset), migrates to head, and disposes of the pool at shutdown.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.exc import DataError, IntegrityError

from neondb import NeonDB, load_settings
from neondb.errors import exception_chain, sqlstate_of
from todo_api import conversations, tasks
from todo_api.auth import AuthenticationGate, Authenticator, require_admin
from todo_api.fair_share import user_limiter
from todo_api.models import MIGRATIONS
from todo_api.settings import AppSettings

__all__ = ["create_app"]

log = logging.getLogger("todo_api")

# Swagger UI's files ship inside the `fastapi-offline` wheel: /docs works without a network.
SWAGGER_STATIC = Path(fastapi_offline.__file__).parent / "static"
STATIC_URL = "/static/docs"
NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


# A 422 names what was wrong, echoing a little of the input: never megabytes of it, and
# never more work than the handful of errors shown (a body of 100,000 unknown fields has
# as many errors).
MAX_ERRORS = 20
MAX_ECHO_CHARS = 120
_ITEMS_LOOKED_AT = 8
_DEPTH_LOOKED_AT = 3


def _printable(value: Any, depth: int = 0) -> Any:
    """A bounded, JSON-safe echo of a client's input: at most a few items of a container,
    a few levels deep. JSON-safe, or the 422 would turn into a 500: a lone surrogate (from
    a `\\ud800` escape) cannot be encoded as UTF-8, and `1e999` parses to infinity, which
    strict JSON cannot carry."""
    if isinstance(value, str):
        return value[: MAX_ECHO_CHARS + 1].encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list | tuple | dict):
        if depth >= _DEPTH_LOOKED_AT:
            return "..."
        if isinstance(value, dict):
            items = itertools.islice(value.items(), _ITEMS_LOOKED_AT)
            return {str(_printable(k, depth + 1)): _printable(v, depth + 1) for k, v in items}
        return [_printable(v, depth + 1) for v in value[:_ITEMS_LOOKED_AT]]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[: MAX_ECHO_CHARS + 1]


def _short_input(value: Any) -> Any:
    """The input as echoed: itself when short, else the start of its JSON text and `...`."""
    echo = _printable(value)
    text = json.dumps(echo, ensure_ascii=False)
    if len(text) <= MAX_ECHO_CHARS:
        return echo
    if isinstance(echo, str):
        return echo[:MAX_ECHO_CHARS] + "..."
    return text[:MAX_ECHO_CHARS] + "..."


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    shown = []
    for error in errors[:MAX_ERRORS]:
        error = dict(error)
        if "input" in error:
            error["input"] = _short_input(error["input"])
        if "ctx" in error:  # the rule broken: `max_length: 20`, or the validator's message
            error["ctx"] = {
                k: v if v is None or isinstance(v, bool | int | float) else _short_input(str(v))
                for k, v in error["ctx"].items()
            }
        shown.append(error)
    if len(errors) > MAX_ERRORS:
        shown.append(
            {
                "type": "too_many_errors",
                "loc": ["body"],
                "msg": f"{len(errors) - MAX_ERRORS} more errors not shown",
            }
        )
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(shown)})


# Driver functions that turn received rows into Python values (psycopg's cursors and
# transformer, SQLAlchemy's async adapters calling them).
_READING_RESULTS = frozenset({"fetchone", "fetchmany", "fetchall", "load_row", "load_rows"})


def _raised_reading_results(exc: BaseException) -> bool:
    """The error came from decoding a result: the statement had run (and, in autocommit,
    committed). Told by where it was raised, as drivers give such errors no SQLSTATE."""
    for e in exception_chain(exc):
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_name in _READING_RESULTS:
                return True
            tb = tb.tb_next
    return False


async def _rejected_by_database(request: Request, exc: Exception) -> Response:
    # The models validate what PostgreSQL would refuse; this is the backstop, so a value that
    # slipped through is still the client's 422, in FastAPI's validation shape, never a 500.
    # But a DataError the driver raises while decoding a result comes after the statement
    # ran, and after an autocommit write committed: calling that "bad input" would hide a
    # committed write. (A value the driver refuses to send is still the client's.)
    if sqlstate_of(exc) is None and _raised_reading_results(exc):
        log.error(
            "%s %s: cannot decode a database result (the statement ran; an autocommit "
            "write is committed)",
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return JSONResponse(status_code=500, content={"detail": "Internal Server Error"})
    log.warning(
        "%s %s: database rejected a value: %s", request.method, request.url.path, type(exc).__name__
    )
    detail = [{"type": "value_error", "loc": ["body"], "msg": "value rejected by the database"}]
    return JSONResponse(status_code=422, content={"detail": detail})


def _docs(app: FastAPI) -> None:
    app.mount(STATIC_URL, StaticFiles(directory=SWAGGER_STATIC), name="docs-static")
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            # No validator badge: it would send the schema to an outside host.
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def create_app(settings: AppSettings | None = None) -> FastAPI:
    """A new application. `settings` default to the environment (and `.env`)."""
    settings = settings or load_settings(AppSettings)
    auth = Authenticator.from_settings(settings)
    settings.check_production()
    neon = NeonDB(settings, migrations=MIGRATIONS)
    app = FastAPI(
        title="todo_api",
        summary="Per-user tasks and chat history on neondb",
        version="0.1.0",
        lifespan=neon.lifespan,  # it also freezes start-up's objects out of the GC
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        # FastAPI asks OpenTelemetry on every request whether it is set up (opentelemetry-api
        # is one of its dependencies); nobody is listening unless APP_TELEMETRY says so.
        telemetry=None if settings.app_telemetry else NO_TELEMETRY,
    )
    app.state.auth = auth
    app.state.settings = settings
    app.state.user_limiter = user_limiter(settings)
    # Added first, so it runs inside neondb's middleware: after the request id and the body
    # limit, before FastAPI reads a byte of the body.
    app.add_middleware(AuthenticationGate, authenticator=auth, prefix="/api")
    neon.install(
        app,
        admin=require_admin,
        access_log=settings.access_log,
        max_body_bytes=settings.app_max_body_bytes,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _rejected_by_database)
    app.add_exception_handler(IntegrityError, _rejected_by_database)
    app.include_router(tasks.router)
    app.include_router(conversations.router)
    _docs(app)
    return app
