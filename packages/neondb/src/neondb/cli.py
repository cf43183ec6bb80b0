"""The `neondb` command: inspect a URL, diagnose a database, run the embedded server."""

from __future__ import annotations

import asyncio
import logging
import ssl
from importlib.metadata import version
from typing import Annotated, Any

from neondb.extras import missing_extra

try:
    import typer
    from rich.console import Console
    from rich.table import Table
except ImportError as e:
    raise missing_extra("cli", "the neondb command") from e
from pydantic import SecretStr

from neondb.database import Database
from neondb.doctor import diagnose
from neondb.embedded import EmbeddedServer
from neondb.errors import NeonDBError
from neondb.settings import DatabaseSettings, Driver, load_settings
from neondb.target import Target
from neondb.url import DatabaseURL

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


def tls_words(parsed: DatabaseURL, driver: Driver, kwargs: dict[str, Any]) -> str:
    """The TLS a driver will use, in words (never an object's repr)."""
    rootcert = parsed.param("sslrootcert")
    ca = f"CA file {rootcert}" if rootcert not in (None, "system") else "the system CAs"
    binding = parsed.param("channel_binding")
    if driver == "psycopg":
        from psycopg.conninfo import conninfo_to_dict

        mode = str(conninfo_to_dict(kwargs["conninfo"]).get("sslmode", "prefer"))
    else:
        ssl_arg = kwargs.get("ssl")
        if ssl_arg is False:
            mode = "disable"
        elif isinstance(ssl_arg, ssl.SSLContext):
            if ssl_arg.check_hostname:
                mode = "verify-full"
            elif ssl_arg.verify_mode != ssl.CERT_NONE:
                mode = "verify-ca"
            else:
                mode = "require"
        else:
            mode = str(ssl_arg)
    words = {
        "disable": "off (plain text)",
        "allow": "allow: plain text unless the server insists; certificate not checked",
        "prefer": "prefer: encrypted if the server offers it; certificate not checked",
        "require": "require: encrypted; certificate not checked",
        "verify-ca": f"verify-ca: encrypted; certificate checked against {ca}",
        "verify-full": f"verify-full: encrypted; certificate and host name checked against {ca}",
    }
    out = words.get(mode, mode)
    if binding == "require":
        out += (
            "; SCRAM channel binding required (enforced by libpq)"
            if driver == "psycopg"
            else "; channel_binding=require: asyncpg cannot bind channels, so verify-full "
            "stands in for it"
        )
    return out


def connect_arguments(kwargs: dict[str, Any]) -> str:
    """The driver's connect arguments on one line, the password masked."""
    if "conninfo" in kwargs:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(kwargs["conninfo"])
        if "password" in params:
            params["password"] = "***"
        return make_conninfo("", **params)
    shown = []
    for key, value in kwargs.items():
        if key == "password":
            value = "***" if value else value
        elif isinstance(value, ssl.SSLContext):
            value = "<ssl context, see tls>"
        shown.append(f"{key}={value!r}")
    return " ".join(shown)


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
