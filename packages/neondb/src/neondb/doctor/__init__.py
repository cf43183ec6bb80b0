"""`neondb doctor`: what the layer makes of a URL, and what the network and server say
back, step by step; each step says what it found, what failed and how to fix it.

Steps, in order (a failed step marks those that need it skipped):

1. `url`: the URL parses and translates for the driver (secrets masked);
2. `dns`, 3. `connect`: the host name resolves; a TCP (or Unix socket) connection opens;
4. `tls`: the server offers TLS, its version, and whether the certificate verifies;
5. `auth`: the authentication the server asks for (trust, MD5, SCRAM, channel binding);
6. `login`: the driver logs in (role, password, database); the server's version;
7. `pooler`: a transaction pooler or direct, from the server's behaviour;
8. `latency`: 10 round trips; 9. `statement_timeout` as the layer's sessions see it;
10. `max_connections` against DB_POOL_MAX × workers; 11. `migrations` at head.

The network and protocol steps speak on a socket of their own (`network`, `wire`), the
server steps through the driver (`driver`, `server`); none changes anything on the server.
"""

from __future__ import annotations

from typing import Any

from neondb.doctor.driver import Probe, login
from neondb.doctor.migrations import check_migrations
from neondb.doctor.network import Endpoint, NetworkError, open_stream, resolve
from neondb.doctor.report import Report, Status, Step
from neondb.doctor.server import check_connections, check_latency, check_pooler, check_timeout
from neondb.doctor.translation import connect_arguments, tls_words
from neondb.doctor.wire import AuthRequest, ask_auth, close, negotiate_tls
from neondb.embedded import EmbeddedServer
from neondb.settings import DatabaseSettings
from neondb.target import Target
from neondb.url import SECRET_PARAMS, DatabaseURL, parse_url

__all__ = ["STEPS", "Report", "Status", "Step", "diagnose"]

STEPS = (
    "url",
    "dns",
    "connect",
    "tls",
    "auth",
    "login",
    "pooler",
    "latency",
    "statement_timeout",
    "max_connections",
    "migrations",
)


def _skip_rest(report: Report, failed: str) -> None:
    done = {s.name for s in report.steps}
    for name in STEPS:
        if name not in done:
            report.skip(name, f"needs {failed}")


def _target(report: Report, settings: DatabaseSettings, embedded: EmbeddedServer | None) -> Target:
    """The url step; raises on failure (after adding it)."""
    try:
        url = parse_url(embedded.start()) if embedded is not None else None
        target = Target.from_settings(settings, url)
        assert target.url is not None
        spec = target.url.spec(target.driver, connect_timeout_s=settings.db_connect_timeout_s)
    except Exception as e:
        report.add(
            "url",
            "fail",
            str(e),
            "fix DATABASE_URL: postgresql://user:password@host:port/database?sslmode=require "
            "(`neondb url` shows how it is read)",
        )
        raise
    where = "the embedded server" if embedded is not None else target.url.display
    report.add(
        "url",
        "ok",
        f"{where}; driver {target.driver}: {target.driver_reason}; "
        f"tls {tls_words(target.url, target.driver, spec.kwargs)}; "
        f"connect arguments: {connect_arguments(spec.kwargs)}",
        url=target.url.display,
        driver=target.driver,
        driver_reason=target.driver_reason,
    )
    return target


def _auth_step(report: Report, asked: AuthRequest, target: Target, tls: bool) -> None:
    assert target.url is not None
    binding = target.url.param("channel_binding") or "prefer"
    loopback = Endpoint.of(target.url).loopback
    data: dict[str, Any] = {"method": asked.method, "mechanisms": asked.mechanisms}
    if asked.method == "scram-sha-256":
        if not asked.channel_binding_offered:
            detail = "SCRAM-SHA-256 without channel binding (the server offers none"
            detail += ": a pooler?)" if tls else ": no TLS)"
            if binding == "require" and target.driver == "psycopg":
                report.add(
                    "auth",
                    "fail",
                    detail + ", but the URL says channel_binding=require",
                    "drop channel_binding=require for this endpoint (PgBouncer cannot bind "
                    "channels) and verify the certificate instead (sslmode=verify-full)",
                    data=data,
                )
                return
            report.add("auth", "ok", detail, data=data)
        elif target.driver == "psycopg" and binding != "disable":
            report.add(
                "auth", "ok", "SCRAM-SHA-256 with channel binding (SCRAM-SHA-256-PLUS)", data=data
            )
        else:
            why = "asyncpg cannot bind channels" if target.driver == "asyncpg" else "disabled"
            report.add(
                "auth",
                "ok",
                f"SCRAM-SHA-256 without channel binding: the server offers it, {why}",
                data=data,
            )
    elif asked.method == "md5":
        report.add(
            "auth",
            "warn",
            "MD5 password",
            "MD5 is deprecated: set password_encryption = 'scram-sha-256' and the password "
            "again, and scram-sha-256 in pg_hba.conf",
            data=data,
        )
    elif asked.method in ("trust", "password") and not loopback and not tls:
        report.add(
            "auth",
            "warn",
            f"{asked.method} over a plain network connection",
            "use SCRAM with TLS (sslmode=require): anyone on the path can read or reuse it",
            data=data,
        )
    else:
        words = {"trust": "trust (no password asked)", "password": "cleartext password"}
        report.add("auth", "ok", words.get(asked.method, asked.method), data=data)


async def _network(report: Report, target: Target) -> bool:
    """dns, connect, tls, auth on a socket of our own; False once a step failed."""
    assert target.url is not None
    timeout_s = target.settings.db_connect_timeout_s
    endpoint = Endpoint.of(target.url)
    step = "dns"
    try:
        if endpoint.unix:
            addresses: list[str | None] = [None]
            report.add("dns", "ok", f"not needed: Unix socket in {endpoint.host}")
        else:
            found = await resolve(endpoint, timeout_s)
            addresses = list(found)
            said = "an address, no lookup" if found == [endpoint.host] else ", ".join(found)
            report.add("dns", "ok", f"{endpoint.host}: {said}", addresses=found)
        step = "connect"
        error: NetworkError | None = None
        for address in addresses:
            try:
                reader, writer, ms = await open_stream(endpoint, address, timeout_s)
                break
            except NetworkError as e:
                error = error or e
        else:
            assert error is not None
            raise error
        where = endpoint.socket_path if endpoint.unix else f"{address}:{endpoint.port}"
        report.add("connect", "ok", f"{where} in {ms:.1f} ms", ms=round(ms, 3))
        try:
            step = "tls"
            tls = await negotiate_tls(reader, writer, target.url, endpoint, timeout_s)
            if tls is not None:
                report.add(
                    "tls",
                    "ok",
                    f"{tls.version} ({tls.cipher}); {tls.checked}",
                    version=tls.version,
                    cipher=tls.cipher,
                )
            elif endpoint.unix:
                report.add("tls", "ok", "not used: a Unix socket stays on this machine")
            elif endpoint.loopback:
                report.add("tls", "ok", f"off (sslmode={target.url.sslmode}), loopback only")
            else:
                report.add(
                    "tls",
                    "warn",
                    f"off (sslmode={target.url.sslmode}): plain text over the network",
                    "use sslmode=require, or verify-full with sslrootcert",
                )
            step = "auth"
            asked = await ask_auth(reader, writer, target.url, timeout_s)
            _auth_step(report, asked, target, tls is not None)
        finally:
            await close(writer)
    except NetworkError as e:
        report.add(step, "fail", str(e), e.fix)
    return not report.failed


async def _server(report: Report, target: Target, workers: int, migrations: str | None) -> None:
    """login, then the steps that need it."""
    assert target.url is not None
    timeout_s = target.settings.db_connect_timeout_s
    try:
        probe: Probe = await login(target.url, target.driver, timeout_s)
    except NetworkError as e:
        report.add("login", "fail", str(e), e.fix)
        return
    try:
        version, user, database = await probe.row(
            "SELECT current_setting('server_version'), current_user, current_database()"
        )
        report.add(
            "login",
            "ok",
            f"as {user} to {database} with {probe.driver}: PostgreSQL {version}; TLS {probe.tls}",
            server_version=version,
            user=user,
            database=database,
        )
        step = "pooler"
        try:
            pooler = await check_pooler(report, probe, target, timeout_s)
            step = "latency"
            await check_latency(report, probe)
            step = "statement_timeout"
            await check_timeout(report, target, pooler)
            step = "max_connections"
            await check_connections(report, probe, target, pooler, workers)
            step = "migrations"
            await check_migrations(report, probe, migrations, target.settings)
        except Exception as e:
            report.add(step, "fail", f"{type(e).__name__}: {e}", "read the server's log")
    finally:
        await probe.close()


async def diagnose(
    settings: DatabaseSettings, *, workers: int = 1, migrations: str | None = None
) -> Report:
    """Run every step against the database the settings name (DATABASE_URL unset: the
    embedded server, started if need be). `workers`: processes that each open a pool of
    DB_POOL_MAX; `migrations`: `module:attr` of the app's `neondb.Migrations`."""
    report = Report()
    embedded = EmbeddedServer(settings.db_data_dir) if settings.database_url is None else None
    try:
        try:
            target = _target(report, settings, embedded)
        except Exception:
            _skip_rest(report, "url")
            return report
        if await _network(report, target):
            await _server(report, target, workers, migrations)
        if report.failed:
            _skip_rest(report, report.failed[0].name)
        secrets = _secrets_of(target.url)
        for secret in secrets:  # belt and braces: no step repeats one, whatever a server said
            for step in report.steps:
                step.detail = step.detail.replace(secret, "***")
                step.fix = step.fix.replace(secret, "***")
    finally:
        if embedded is not None:
            embedded.stop()
    return report


def _secrets_of(url: DatabaseURL | None) -> list[str]:
    """The URL's password and any secret query parameter (`?password=`, `sslpassword`)."""
    if url is None:
        return []
    found = [url.url.password or ""]
    for key in SECRET_PARAMS:
        value = url.url.query.get(key)
        found.extend([value] if isinstance(value, str) else list(value or ()))
    return [s for s in found if s and s != "***"]
