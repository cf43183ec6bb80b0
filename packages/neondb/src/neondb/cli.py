"""The `neondb` command: inspect a URL, diagnose a database, run the embedded server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from importlib.metadata import version
from typing import Annotated

from neondb.extras import missing_extra

try:
    import typer
    from rich.console import Console
except ImportError as e:
    raise missing_extra("cli", "the neondb command") from e
from pydantic import SecretStr

from neondb.database import Database
from neondb.doctor import diagnose
from neondb.doctor.render import render
from neondb.doctor.translation import connect_arguments, tls_words
from neondb.embedded import EmbeddedServer
from neondb.errors import NeonDBError
from neondb.settings import DatabaseSettings, Driver, load_settings
from neondb.target import Target

__all__ = ["main"]

app = typer.Typer(
    help="neondb: an async database layer for FastAPI on Neon.",
    no_args_is_help=True,
    # Plain Click help: flags shown as they are typed (rich's shows `--flag <bool>`).
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
embedded = typer.Typer(help="The embedded PostgreSQL server used when DATABASE_URL is unset.")
app.add_typer(embedded, name="embedded")
# soft_wrap: a printed line is never broken at the terminal width (scripts read it back).
console = Console(soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"neondb {version('neondb')}")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """neondb: an async database layer for FastAPI on Neon."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings() -> DatabaseSettings:
    try:
        return load_settings(DatabaseSettings)
    except NeonDBError as e:
        raise _fail(str(e)) from None


@app.command()
def url(
    raw: Annotated[str | None, typer.Argument(help="a URL; default: DATABASE_URL")] = None,
    driver: Annotated[
        Driver | None,
        typer.Option(help="show this driver's translation instead of the one neondb picks"),
    ] = None,
) -> None:
    """Show what neondb makes of a URL: the endpoint, the driver it picks and why, the TLS
    it will use, and the driver's connect arguments (password masked). One line each,
    never wrapped."""
    settings = _settings()
    if raw is not None:
        settings = settings.model_copy(update={"database_url": SecretStr(raw)})
    if settings.database_url is None:
        typer.echo("DATABASE_URL is unset: the embedded server is used (neondb embedded url).")
        return
    try:
        target = Target.from_settings(settings)
        assert target.url is not None
        chosen = driver or target.driver
        spec = target.url.spec(chosen, connect_timeout_s=settings.db_connect_timeout_s)
    except NeonDBError as e:
        raise _fail(str(e)) from None
    endpoint = "Neon" if target.url.is_neon else "PostgreSQL"
    mode = "transaction pooler" if target.pooler else "direct"
    lines = [
        ("url", target.url.display),
        ("endpoint", f"{endpoint}, {mode}: {target.pooler_reason}"),
        ("driver", f"{target.driver}: {target.driver_reason}"),
        ("tls", tls_words(target.url, chosen, spec.kwargs)),
        (chosen, connect_arguments(spec.kwargs)),
    ]
    for key, value in lines:
        typer.echo(f"{key:<9}{value}")


def _workers(value: int | None) -> int:
    if value is not None:
        return value
    raw = os.environ.get("WEB_CONCURRENCY", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise _fail(f"WEB_CONCURRENCY={raw!r} is not a number of workers (1 or more)")
    return int(raw)


@app.command()
def doctor(
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report as one JSON object")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="processes that each open a pool of DB_POOL_MAX; default WEB_CONCURRENCY or 1",
        ),
    ] = None,
    migrations: Annotated[
        str | None,
        typer.Option(
            help="module:attr of the app's neondb.Migrations, to check the database is at head"
        ),
    ] = None,
    strict: Annotated[bool, typer.Option(help="exit non-zero on warnings too")] = False,
) -> None:
    """Check, step by step, the URL, DNS, the connection, TLS, authentication, the login,
    pooler or direct, latency, statement_timeout, max_connections and migrations; each
    failed step says how to fix it. Exits 0 when no step failed, 1 otherwise."""
    report = asyncio.run(diagnose(_settings(), workers=_workers(workers), migrations=migrations))
    if as_json:
        typer.echo(json.dumps(report.to_dict()))  # one line, never wrapped
    else:
        render(report, console)
    raise typer.Exit(0 if report.ok and not (strict and report.warnings) else 1)


@app.command("role-timeout")
def role_timeout() -> None:
    """Set this role's default statement_timeout in this database to DB_STATEMENT_TIMEOUT_S
    (for pooled endpoints, where per-session SETs do not stick; start-up does it too)."""
    settings = _settings()

    async def run() -> None:
        async with (
            Database(settings.model_copy(update={"db_pool_min": 1})) as db,
            db.engine.connect() as conn,
        ):
            await db.ensure_role_timeout(conn)
        ms = round(settings.db_statement_timeout_s * 1000)
        console.print(f"statement_timeout default for this role in this database: {ms} ms")

    asyncio.run(run())


@embedded.command("start")
def embedded_start() -> None:
    """Start (or join) the embedded server and leave it running; print its URL."""
    server = EmbeddedServer(_settings().db_data_dir, stop_on_exit=False)
    typer.echo(server.start())  # plain: `psql "$(neondb embedded url)"` reads it back


@embedded.command("url")
def embedded_url() -> None:
    """Print the embedded server's URL (starting it if needed)."""
    embedded_start()


@embedded.command("stop")
def embedded_stop() -> None:
    """Stop the embedded server."""
    stopped = EmbeddedServer(_settings().db_data_dir).shutdown()
    typer.echo("stopped" if stopped else "not running")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
