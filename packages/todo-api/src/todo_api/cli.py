"""`todo-api`: serve the API, print a bearer token, migrate the database.

todo-api serve                       # http://127.0.0.1:8000 (HOST, PORT), docs at /docs
todo-api token --sub alice [--admin] [--ttl-s 3600]
todo-api db upgrade | downgrade REV | current | check | seed
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Annotated, Any, TypeVar

import typer

from neondb import (
    ConfigurationError,
    Database,
    MigrationDriftError,
    NeonDBError,
    load_settings,
    logging_config,
)
from neondb.extras import installed
from todo_api.auth import Authenticator, dev_secret_path, issue_token
from todo_api.models import MIGRATIONS
from todo_api.seed import seed
from todo_api.settings import AppSettings

__all__ = ["main"]

T = TypeVar("T")

main = typer.Typer(
    name="todo-api",
    help="The todo_api service: serve it, get a token, migrate.",
    no_args_is_help=True,
    add_completion=False,
    # Plain Click help: flags shown as they are typed (rich's shows `--admin <bool>`).
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"todo-api {version('todo-api')} (neondb {version('neondb')})")
        raise typer.Exit()


@main.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """The todo_api service: serve it, get a token, migrate."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _settings() -> AppSettings:
    try:
        return load_settings(AppSettings)
    except ConfigurationError as e:
        raise _fail(str(e)) from None


def _authenticator(settings: AppSettings) -> Authenticator:
    try:
        return Authenticator.from_settings(settings)
    except ConfigurationError as e:
        raise _fail(str(e)) from None


class OneLineTracebacks(logging.Filter):
    """uvicorn logs a failed start-up as the whole chained traceback; neondb has already
    said what to fix in one line, so keep only the traceback's last line unless debugging."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Traceback") and not logging.getLogger().isEnabledFor(logging.DEBUG):
            record.msg, record.args = message.rstrip().splitlines()[-1], None
        return True


def log_config(settings: AppSettings) -> dict[str, Any]:
    """neondb's logging setup (text or JSON, request ids) with uvicorn's start-up
    tracebacks cut to one line; every worker process applies it."""
    config = logging_config(settings.app_log_format, settings.app_log_level)
    config["filters"]["one_line_tracebacks"] = {"()": f"{__name__}.OneLineTracebacks"}
    config["loggers"]["uvicorn.error"]["filters"] = ["one_line_tracebacks"]
    return config


def default_workers(settings: AppSettings) -> int:
    """One process in development; one per core in production."""
    return (os.cpu_count() or 1) if settings.app_env == "production" else 1


@main.command()
def serve(
    host: Annotated[str | None, typer.Option(help="listen address (default: HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: PORT)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="processes (default: 1 in development, one per core in production)"
        ),
    ] = None,
) -> None:
    """Start the API with uvicorn, uvloop and httptools (embedded PostgreSQL when
    DATABASE_URL is unset)."""
    import uvicorn

    settings = _settings()
    try:
        database = Database(settings).describe()  # a bad URL stops here, before binding
    except ConfigurationError as e:
        raise _fail(str(e)) from None
    _authenticator(settings)  # refuse to start without keys in production, before binding
    try:
        settings.check_production()
    except ConfigurationError as e:
        raise _fail(str(e)) from None
    host = host or settings.host
    port = port or settings.port
    workers = workers or default_workers(settings)
    shown = f"[{host}]" if ":" in host else host
    processes = f", {workers} worker processes" if workers > 1 else ""
    typer.echo(f"todo_api on http://{shown}:{port} (docs: http://{shown}:{port}/docs){processes}")
    typer.echo(f"database: {database}")
    if settings.auth_secret is None and settings.auth_jwks_url is None:
        typer.echo("get a token: todo-api token --sub alice")
    else:
        typer.echo("get a token: todo-api token --sub alice (signed with AUTH_SECRET)")
    uvicorn.run(
        "todo_api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop" if installed("uvloop") else "asyncio",
        http="httptools" if installed("httptools") else "h11",
        log_config=log_config(settings),
        access_log=False,  # the request-context middleware writes a cheaper one (APP_ACCESS_LOG)
    )


@main.command()
def token(
    sub: Annotated[str, typer.Option(help="user id (the `sub` claim)")],
    admin: Annotated[bool, typer.Option("--admin", help='add "role": "admin"')] = False,
    ttl_s: Annotated[int, typer.Option("--ttl-s", min=1, help="lifetime in seconds")] = 3600,
) -> None:
    """Print a bearer token signed with AUTH_SECRET (in development: the generated one)."""
    settings = _settings()
    created = (
        settings.auth_secret is None
        and settings.auth_jwks_url is None
        and not dev_secret_path(settings.db_data_dir).exists()
    )
    auth = _authenticator(settings)
    if auth.secret is None:
        raise _fail("no AUTH_SECRET: tokens come from your identity provider (AUTH_JWKS_URL)")
    if created:
        # The server reads the secret from its own DB_DATA_DIR: a token signed with a new
        # one made here is refused (401) by a server started from another folder.
        path = dev_secret_path(settings.db_data_dir).resolve()
        typer.echo(
            f"warning: no development secret was found, so a new one was made in {path}. "
            "A server started from another folder uses its own DB_DATA_DIR and will answer "
            "401 to this token: run this command where you run the server, or set "
            "DB_DATA_DIR (or AUTH_SECRET) to the same value for both.",
            err=True,
        )
    typer.echo(issue_token(auth.secret, sub, admin=admin, ttl_s=ttl_s))


db_app = typer.Typer(
    help="The schema and demo data: upgrade, downgrade, current, check, seed.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
main.add_typer(db_app, name="db")


def _with_database(settings: AppSettings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run `work` on a started Database (no migration at start; one warm connection);
    a database error is one line on stderr and exit status 1."""

    async def run() -> T:
        quiet = settings.model_copy(update={"db_migrate_on_start": False, "db_pool_min": 1})
        async with Database(quiet) as db:
            return await work(db)

    try:
        return asyncio.run(run())
    except MigrationDriftError as e:
        typer.echo(f"drift: {e}", err=True)
        raise typer.Exit(1) from None
    except NeonDBError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def _report(change: tuple[str | None, str | None]) -> str:
    before, after = change
    if before == after:
        return f"database already at revision {after}"
    return f"database upgraded from revision {before} to {after}"


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Upgrade the schema (on the direct endpoint when DATABASE_URL is a pooler's).
    Concurrent runs migrate once."""
    typer.echo(_report(_with_database(_settings(), lambda db: MIGRATIONS.upgrade(db, revision))))


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="target revision: -1, an id, or base")],
) -> None:
    """Downgrade the schema to REVISION."""
    before, after = _with_database(_settings(), lambda db: MIGRATIONS.downgrade(db, revision))
    typer.echo(f"database downgraded from revision {before} to {after}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema's revision and the migrations' head."""
    current = _with_database(_settings(), MIGRATIONS.current)
    typer.echo(f"database at revision {current}; migrations head is {MIGRATIONS.head()}")


@db_app.command("check")
def db_check() -> None:
    """Exit 1 unless the database is at head and the models match the migrations."""
    _with_database(_settings(), MIGRATIONS.check)
    typer.echo(f"database at revision {MIGRATIONS.head()}; models match the migrations")


@db_app.command("seed")
def db_seed(
    user: Annotated[str, typer.Option(help="the demo user's id (the token's sub)")] = "demo",
) -> None:
    """Load demo data for USER (upgrading first); running it again adds nothing."""

    async def run(db: Database) -> dict[str, int]:
        await MIGRATIONS.upgrade(db)
        return await seed(db, user)

    added = _with_database(_settings(), run)
    typer.echo(
        f"seeded {added['tasks']} tasks, {added['conversations']} conversations and "
        f"{added['messages']} messages for {user!r} (token: todo-api token --sub {user})"
    )


@main.command(hidden=True)
def migrate(
    check: Annotated[bool, typer.Option("--check", help="only check")] = False,
) -> None:
    """Old name of `db upgrade` (and `db check` with --check)."""
    if check:
        db_check()
    else:
        db_upgrade("head")
