"""The application factory: `todo_api.app:create_app` (uvicorn: `factory=True`).

Nothing happens at import. `create_app()` reads the settings (environment and `.env`) and
the auth keys; the lifespan connects (starting the embedded server when `DATABASE_URL` is
unset), migrates to head, and disposes of the pool at shutdown.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.exc import DataError, IntegrityError

from neondb import NeonDB, load_settings
from todo_api import conversations, tasks
from todo_api.auth import Authenticator, require_admin
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


def _printable(value: Any) -> Any:
    """JSON-safe echo of a client's input, which would otherwise turn the 422 into a 500: a
    lone surrogate (from a `\\ud800` escape) cannot be encoded as UTF-8, and `1e999` parses
    to infinity, which strict JSON cannot carry."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        status_code=422, content={"detail": _printable(jsonable_encoder(exc.errors()))}
    )


async def _rejected_by_database(request: Request, exc: Exception) -> JSONResponse:
    # The models validate what PostgreSQL would refuse; this is the backstop, so a value that
    # slipped through is still the client's 422, in FastAPI's validation shape, never a 500.
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
    neon = NeonDB(settings, migrations=MIGRATIONS)
    app = FastAPI(
        title="todo_api",
        summary="Per-user tasks and chat history on neondb",
        version="0.1.0",
        lifespan=neon.lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        # FastAPI asks OpenTelemetry on every request whether it is set up (opentelemetry-api
        # is one of its dependencies); nobody is listening unless APP_TELEMETRY says so.
        telemetry=None if settings.app_telemetry else NO_TELEMETRY,
    )
    app.state.auth = auth
    app.state.settings = settings
    neon.install(app, admin=require_admin, access_log=settings.access_log)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _rejected_by_database)
    app.add_exception_handler(IntegrityError, _rejected_by_database)
    app.include_router(tasks.router)
    app.include_router(conversations.router)
    _docs(app)
    return app
