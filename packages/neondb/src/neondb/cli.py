"""The `neondb` command: inspect a URL, diagnose a database, run the embedded server."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from neondb.extras import missing_extra

try:
    import typer
    from rich.console import Console
    from rich.table import Table
except ImportError as e:
    raise missing_extra("cli", "the neondb command") from e

from neondb.database import Database
from neondb.doctor import diagnose
from neondb.embedded import EmbeddedServer
from neondb.errors import NeonDBError
from neondb.settings import DatabaseSettings, load_settings
from neondb.url import parse_url

__all__ = ["main"]

app = typer.Typer(help="neondb: an async database layer for FastAPI on Neon.", no_args_is_help=True)
embedded = typer.Typer(help="The embedded PostgreSQL server used when DATABASE_URL is unset.")
app.add_typer(embedded, name="embedded")
console = Console()


def _settings() -> DatabaseSettings:
    try:
        return load_settings(DatabaseSettings)
    except NeonDBError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


@app.command()
def url(
    raw: Annotated[str | None, typer.Argument(help="a URL; default: DATABASE_URL")] = None,
) -> None:
    """Show how a URL is translated for each driver (password masked)."""
    settings = _settings()
    value = raw or (settings.database_url.get_secret_value() if settings.database_url else None)
    if not value:
        console.print("DATABASE_URL is unset: the embedded server is used.")
        return
    try:
        parsed = parse_url(value)
        table = Table("driver", "connect arguments")
        for driver in ("asyncpg", "psycopg"):
            spec = parsed.spec(driver, connect_timeout_s=settings.db_connect_timeout_s)
            shown = {k: ("***" if k == "password" else v) for k, v in spec.kwargs.items()}
            if "conninfo" in shown:
                shown["conninfo"] = _mask_conninfo(str(shown["conninfo"]))
            table.add_row(driver, repr(shown))
    except NeonDBError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{parsed.display}  neon={parsed.is_neon} pooler={parsed.is_pooler}")
    console.print(table)


def _mask_conninfo(conninfo: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(conninfo)
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


@app.command()
def doctor() -> None:
    """Connect with the current settings and report what the layer and server do."""
    report = asyncio.run(diagnose(_settings()))
    table = Table("check", "ok", "detail")
    for f in report.findings:
        table.add_row(f.check, "[green]yes[/green]" if f.ok else "[red]no[/red]", f.detail)
    console.print(table)
    raise typer.Exit(0 if report.ok else 1)


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
    console.print(server.start())


@embedded.command("url")
def embedded_url() -> None:
    """Print the embedded server's URL (starting it if needed)."""
    embedded_start()


@embedded.command("stop")
def embedded_stop() -> None:
    """Stop the embedded server."""
    stopped = EmbeddedServer(_settings().db_data_dir).shutdown()
    console.print("stopped" if stopped else "not running")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
