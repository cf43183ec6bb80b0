"""Postgres URLs as users paste them, translated into what each driver accepts.

Neon's console gives `postgresql://user:pw@ep-x-123.region.aws.neon.tech/db?sslmode=require
&channel_binding=require`. libpq (psycopg) understands every parameter; asyncpg knows neither
`sslmode` as a keyword nor channel binding, and SQLAlchemy's asyncpg dialect passes query
parameters through verbatim, so the raw string fails with a TypeError.

Rules, so that a translation never silently weakens security:

* `channel_binding=require` with asyncpg, which cannot bind channels: the TLS certificate is
  verified against the host name instead (`verify-full`), which defeats the same
  man-in-the-middle, and a warning says so. With `sslmode=disable` it is refused.
* Neon hosts (`*.neon.tech`) always use TLS; `sslmode=disable` there is refused.
* The password never appears in `repr()`, `str()` or an error message.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from neondb.errors import ConfigurationError

__all__ = ["ConnectSpec", "DatabaseURL", "parse_url"]

log = logging.getLogger("neondb")

Driver = Literal["asyncpg", "psycopg"]
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# libpq parameters asyncpg has no use for; dropping them changes no behaviour.
_ASYNCPG_IGNORED = frozenset({"channel_binding", "gssencmode", "pgbouncer"})
_SCHEMES = {
    "postgres": None,
    "postgresql": None,
    "postgresql+asyncpg": "asyncpg",
    "postgresql+psycopg": "psycopg",
    "postgresql+psycopg_async": "psycopg",
    "postgresql+psycopg2": "psycopg",
}


@dataclass(frozen=True)
class ConnectSpec:
    """What one driver needs to open a connection: keyword arguments for `asyncpg.connect`
    or a libpq conninfo string for psycopg. `repr` hides the password."""

    driver: Driver
    kwargs: dict[str, Any] = field(repr=False)
    display: str

    def __repr__(self) -> str:
        return f"ConnectSpec({self.driver}, {self.display})"


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed Postgres URL. Use `spec()` to get driver connect arguments."""

    url: URL = field(repr=False)
    driver_hint: Driver | None

    def __repr__(self) -> str:
        return f"DatabaseURL({self.display!r})"

    __str__ = __repr__

    @property
    def display(self) -> str:
        """The URL with the password masked (also a `password=` query parameter, which
        libpq accepts): safe for logs."""
        url = self.url
        if "password" in url.query:
            url = url.update_query_dict({"password": "***"})
        return url.render_as_string(hide_password=True)

    @property
    def host(self) -> str:
        host = self.url.host or ""
        if not host:  # unix socket: postgresql://user@/db?host=/run/postgresql
            raw = self.url.query.get("host", "")
            host = raw if isinstance(raw, str) else raw[0]
        return host

    @property
    def is_unix_socket(self) -> bool:
        return self.host.startswith("/")

    @property
    def is_neon(self) -> bool:
        host = self.host.lower()  # DNS names are case-insensitive
        return host.endswith(".neon.tech") or ".neon.tech:" in host

    @property
    def is_pooler(self) -> bool:
        """Neon's pooler endpoints carry `-pooler` in the first host label."""
        return "-pooler" in self.host.lower().split(".", 1)[0]

    def param(self, name: str) -> str | None:
        value = self.url.query.get(name)
        if value is None:
            return None
        return value if isinstance(value, str) else value[-1]

    @property
    def sslmode(self) -> str:
        mode = self.param("sslmode")
        if mode is None:
            return "require" if self.is_neon else ("disable" if self.is_unix_socket else "prefer")
        if mode not in SSL_MODES:
            raise ConfigurationError(
                f"sslmode={mode!r} in the database URL is not one of {', '.join(SSL_MODES)}"
            )
        if mode in ("disable", "allow", "prefer") and self.is_neon:
            # Neon refuses plain connections anyway; say why instead of a confusing failure.
            if mode == "disable":
                raise ConfigurationError("sslmode=disable cannot work with Neon: it requires TLS")
            return "require"
        return mode

    def with_database(self, name: str) -> DatabaseURL:
        return DatabaseURL(self.url.set(database=name), self.driver_hint)

    def spec(self, driver: Driver, *, connect_timeout_s: float) -> ConnectSpec:
        if driver == "asyncpg":
            return ConnectSpec(driver, self._asyncpg_kwargs(connect_timeout_s), self.display)
        return ConnectSpec(driver, {"conninfo": self._conninfo(connect_timeout_s)}, self.display)

    # asyncpg -----------------------------------------------------------------------------

    def _ssl_for_asyncpg(self) -> ssl.SSLContext | str | bool:
        mode = self.sslmode
        binding = self.param("channel_binding") or "prefer"
        if binding not in ("disable", "prefer", "require"):
            raise ConfigurationError(
                f"channel_binding={binding!r} in the database URL: use disable, prefer or require"
            )
        if binding == "require":
            if mode == "disable":
                raise ConfigurationError(
                    "channel_binding=require needs TLS, but the URL says sslmode=disable"
                )
            if mode != "verify-full":
                log.warning(
                    "asyncpg cannot do SCRAM channel binding: verifying the server's TLS "
                    "certificate and host name (sslmode=verify-full) instead, which gives the "
                    "same protection against a man in the middle. Use DB_DRIVER=psycopg for "
                    "real channel binding."
                )
                mode = "verify-full"
        if mode == "disable":
            return False
        if mode in ("allow", "prefer"):
            return "prefer"
        rootcert = self.param("sslrootcert")
        if mode == "require" and not rootcert:
            # libpq's `require` encrypts but does not verify: do the same.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        cafile = None if rootcert in (None, "system") else rootcert
        ctx = ssl.create_default_context(cafile=cafile)
        # libpq: a root certificate with `require` behaves as verify-ca.
        ctx.check_hostname = mode == "verify-full"
        return ctx

    def _asyncpg_kwargs(self, connect_timeout_s: float) -> dict[str, Any]:
        url = self.url
        kwargs: dict[str, Any] = {
            "user": url.username,
            "password": url.password,
            "database": url.database,
            "ssl": self._ssl_for_asyncpg(),
            "timeout": connect_timeout_s,
        }
        if self.is_unix_socket:
            kwargs["host"] = self.host
            kwargs["port"] = url.port or _int(self.param("port"), "port") or 5432
        else:
            kwargs["host"] = url.host
            kwargs["port"] = url.port or 5432
        server_settings: dict[str, str] = {}
        for key, raw in url.query.items():
            value = raw if isinstance(raw, str) else raw[-1]
            if key in ("sslmode", "sslrootcert", "host", "port") or key in _ASYNCPG_IGNORED:
                continue
            if key == "password":  # libpq's form: ...?password=...
                kwargs["password"] = value
            elif key == "target_session_attrs":
                kwargs[key] = value  # asyncpg supports it (replica sets, multi-host URLs)
            elif key == "connect_timeout":
                kwargs["timeout"] = float(_int(value, key) or connect_timeout_s)
            elif key in ("application_name", "options"):
                # Neon's proxy reads `options=endpoint=<id>` for SNI-less clients.
                server_settings[key] = unquote(value)
            elif key in ("sslcert", "sslkey"):
                ctx = kwargs["ssl"]
                if isinstance(ctx, ssl.SSLContext) and key == "sslcert":
                    ctx.load_cert_chain(value, self.param("sslkey"))
            else:
                raise ConfigurationError(
                    f"the database URL parameter {key!r} is not supported with asyncpg; "
                    "remove it or use DB_DRIVER=psycopg"
                )
        if server_settings:
            kwargs["server_settings"] = server_settings
        return kwargs

    # psycopg (libpq) ---------------------------------------------------------------------

    def _conninfo(self, connect_timeout_s: float) -> str:
        import psycopg
        from psycopg.conninfo import make_conninfo

        url = self.url
        params: dict[str, Any] = {}
        for key, raw in url.query.items():
            params[key] = raw if isinstance(raw, str) else raw[-1]
        params.pop("pgbouncer", None)
        params["sslmode"] = self.sslmode
        if params["sslmode"] == "disable" and params.get("channel_binding") == "require":
            # libpq would only fail at connect time, with a less direct message.
            raise ConfigurationError(
                "channel_binding=require needs TLS, but the URL says sslmode=disable"
            )
        # libpq's connect_timeout is whole seconds, and values under 2 are raised to 2.
        params.setdefault("connect_timeout", str(max(2, round(connect_timeout_s))))
        if url.host:
            params["host"] = url.host
        if url.port:
            params["port"] = str(url.port)
        if url.username:
            params["user"] = url.username
        if url.password is not None:
            # As libpq itself: a `password=` query parameter wins over the userinfo one.
            params.setdefault("password", url.password)
        if url.database:
            params["dbname"] = url.database
        try:
            return make_conninfo("", **params)
        except psycopg.ProgrammingError as e:  # an option libpq does not know
            raise ConfigurationError(
                f"the database URL has a parameter libpq rejects: {e}"
            ) from None


def _int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} in the database URL is not a number") from None


def parse_url(raw: str) -> DatabaseURL:
    """Parse any Postgres URL form: postgres://, postgresql://, postgresql+asyncpg://,
    postgresql+psycopg://, with Neon's query parameters."""
    raw = raw.strip()
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        scheme = raw.split("://", 1)[0] if "://" in raw else "(none)"
        if not scheme.replace("+", "").replace("_", "").isalnum():
            scheme = "(none)"  # not a scheme: it may hold part of a password
        raise ConfigurationError(
            f"the database URL is not a URL (scheme {scheme!r}); expected "
            "postgresql://user:password@host:port/database"
        ) from None
    if url.drivername not in _SCHEMES:
        raise ConfigurationError(
            f"the database URL scheme {url.drivername!r} is not PostgreSQL; expected "
            "postgresql://, postgres://, postgresql+asyncpg:// or postgresql+psycopg://"
        )
    if not url.host and not url.query.get("host"):
        raise ConfigurationError("the database URL names no host")
    return DatabaseURL(url, _SCHEMES[url.drivername])  # type: ignore[arg-type]
