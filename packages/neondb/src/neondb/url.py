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
* Hosts and ports are read as libpq reads them, for both drivers: `?host=` and `?port=` win
  over the authority's, comma lists (`h1:5432,h2:5433` or `host=h1,h2&port=5432,5433`) are
  tried in order, `target_session_attrs` picks among them. A form libpq would read as
  something else (a repeated `host=`, `host=h:5432`, an empty entry, which libpq replaces
  with its default host) is refused: no driver ever falls back to a default host.
* `sslrootcert=system` means verify-full with the system CAs, as in libpq 16+; a weaker
  `sslmode` with it is refused, as libpq refuses it.
* `sslcert`, `sslkey`, `sslrootcert` files must exist; where a driver would ignore them
  they are refused instead. `verify-ca` needs a root certificate (sslrootcert, or libpq's
  default ~/.postgresql/root.crt, which asyncpg then uses as libpq does).
* An '@' or '/' that libpq and SQLAlchemy would split differently (an unencoded '@' in the
  password) is refused without showing any part of the URL.
* The password never appears in `repr()`, `str()` or an error message.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from neondb.errors import ConfigurationError

__all__ = ["SECRET_PARAMS", "ConnectSpec", "DatabaseURL", "parse_url"]

log = logging.getLogger("neondb")

Driver = Literal["asyncpg", "psycopg"]
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# libpq's values (14+); asyncpg accepts the same ones.
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
DEFAULT_PORT = 5432
# sslrootcert=system came with libpq 16; an older libpq reads "system" as a file name.
LIBPQ_SYSTEM_ROOTS = 160000
_TLS_FILES = ("sslrootcert", "sslcert", "sslkey")
SECRET_PARAMS = ("password", "sslpassword")
# libpq parameters asyncpg has no use for; dropping them changes no behaviour.
_ASYNCPG_IGNORED = frozenset({"channel_binding", "gssencmode", "pgbouncer"})
# Handled by the endpoint and TLS code, for asyncpg.
_ASYNCPG_CONSUMED = frozenset({"host", "port", "sslmode", "sslpassword", *_TLS_FILES})
_SCHEMES = {
    "postgres": None,
    "postgresql": None,
    "postgresql+asyncpg": "asyncpg",
    "postgresql+psycopg": "psycopg",
    "postgresql+psycopg_async": "psycopg",
    "postgresql+psycopg2": "psycopg",
}
_ENCODE_HINT = (
    "percent-encode '@' as %40 and '/' as %2F in the user name, password, database name and "
    "query values, e.g. postgresql://app:p%40ss@host/db "
    "(urllib.parse.quote(password, safe='') does it)"
)


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
    """A parsed Postgres URL. Use `spec()` to get driver connect arguments.

    A host list is kept libpq's way, in the query (`?host=h1,h2&port=5432,5433`): the
    authority of a SQLAlchemy URL holds one host."""

    url: URL = field(repr=False)
    driver_hint: Driver | None

    def __repr__(self) -> str:
        return f"DatabaseURL({self.display!r})"

    __str__ = __repr__

    @property
    def display(self) -> str:
        """The URL with the password masked (also `password=` and `sslpassword=` query
        parameters, which libpq accepts): safe for logs."""
        url = self.url
        hidden = {key: "***" for key in SECRET_PARAMS if key in url.query}
        if hidden:
            url = url.update_query_dict(hidden)
        return url.render_as_string(hide_password=True)

    # where: hosts and ports, as libpq reads them ------------------------------------------

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """(host, port) pairs in the order both drivers try them. As in libpq, `?host=` and
        `?port=` win over the authority's; one port applies to every host. Raises
        ConfigurationError for a form libpq would read differently from what it says."""
        hosts = self.hosts
        return tuple(zip(hosts, self._ports(len(hosts)), strict=True))

    @property
    def hosts(self) -> tuple[str, ...]:
        raw = self._single("host")
        if raw is None:
            if not self.url.host:
                raise ConfigurationError("the database URL names no host")
            # make_url has taken the brackets off an IPv6 address, but left %-escapes,
            # which libpq decodes (postgresql://u@%2Frun%2Fpostgresql/db: a socket folder).
            return (unquote(self.url.host),)
        hosts = tuple(raw.split(","))
        for host in hosts:
            _check_host(host)
        return hosts

    @property
    def host(self) -> str:
        """The first host (a Unix socket directory starts with '/')."""
        return self.hosts[0]

    def _ports(self, count: int) -> list[int]:
        raw = self._single("port")
        if raw is None:
            raw = str(self.url.port) if self.url.port is not None else ""
        entries = raw.split(",")
        if len(entries) not in (1, count):
            raise ConfigurationError(
                f"the database URL has {len(entries)} ports for {count} hosts: give one port "
                "for all of them, or one for each host, in the same order"
            )
        ports = [_port(entry) for entry in entries]
        return ports * count if len(ports) == 1 else ports

    def _single(self, name: str) -> str | None:
        value = self.url.query.get(name)
        if isinstance(value, tuple):
            # SQLAlchemy's multi-host form; libpq keeps only the last one.
            raise ConfigurationError(
                f"the database URL gives {name}= {len(value)} times: libpq would use only the "
                "last one, other tools each of them; give one comma-separated list, as in "
                "?host=h1,h2&port=5432,5433"
            )
        return value

    def with_hosts(self, hosts: Sequence[str]) -> DatabaseURL:
        """The same URL with other hosts (ports, user, everything else kept)."""
        if len(hosts) == 1 and "host" not in self.url.query:
            return DatabaseURL(self.url.set(host=hosts[0]), self.driver_hint)
        url = self.url.set(host=None).update_query_dict({"host": ",".join(hosts)})
        return DatabaseURL(url, self.driver_hint)

    @property
    def is_unix_socket(self) -> bool:
        return all(host.startswith("/") for host in self.hosts)

    @property
    def is_neon(self) -> bool:
        # DNS names are case-insensitive. Any Neon host in a list makes the URL TLS-only.
        return any(host.lower().endswith(".neon.tech") for host in self.hosts)

    @property
    def is_pooler(self) -> bool:
        """Neon's pooler endpoints carry `-pooler` in the first host label."""
        return any("-pooler" in host.lower().split(".", 1)[0] for host in self.hosts)

    def param(self, name: str) -> str | None:
        value = self.url.query.get(name)
        if value is None:
            return None
        return value if isinstance(value, str) else value[-1]  # libpq: the last one wins

    # how: TLS ------------------------------------------------------------------------------

    @property
    def sslmode(self) -> str:
        mode = self.param("sslmode")
        if mode is not None and mode not in SSL_MODES:
            raise ConfigurationError(
                f"sslmode={mode!r} in the database URL is not one of {', '.join(SSL_MODES)}"
            )
        if self.param("sslrootcert") == "system":
            # libpq 16+: the system CAs sign certificates for any host on the internet, so
            # they are only worth trusting with the host name checked.
            if mode is None:
                mode = "verify-full"
            elif mode != "verify-full":
                raise ConfigurationError(
                    f"sslmode={mode} with sslrootcert=system in the database URL: libpq "
                    "refuses any mode weaker than verify-full with the system CAs (a "
                    "certificate they signed for any other host would pass); use "
                    "sslmode=verify-full or leave sslmode out"
                )
        if mode is None:
            return "require" if self.is_neon else ("disable" if self.is_unix_socket else "prefer")
        if mode in ("disable", "allow", "prefer") and self.is_neon:
            # Neon refuses plain connections anyway; say why instead of a confusing failure.
            if mode == "disable":
                raise ConfigurationError("sslmode=disable cannot work with Neon: it requires TLS")
            return "require"
        return mode

    def _tls_files(self, mode: str) -> dict[str, str]:
        """sslrootcert (unless `system`), sslcert and sslkey as given, each checked to be an
        existing file, and refused where TLS is off and would not use them."""
        files = {key: value for key in _TLS_FILES if (value := self.param(key))}
        if files.get("sslrootcert") == "system":
            del files["sslrootcert"]
        for key, path in files.items():
            if not os.path.isfile(path):
                raise ConfigurationError(
                    f"{key}={path!r} in the database URL: the file does not exist"
                )
        if files and mode == "disable":
            raise ConfigurationError(
                f"{', '.join(files)} in the database URL need TLS, but sslmode is disable "
                "(the default for a Unix socket): no certificate would be used"
            )
        return files

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
        files = self._tls_files(mode)
        if mode == "disable":
            return False
        if mode in ("allow", "prefer"):
            if files:
                # asyncpg's "prefer" takes no SSL context: they would be silently unused,
                # where libpq verifies with sslrootcert and sends sslcert whenever TLS is on.
                raise ConfigurationError(
                    f"{', '.join(files)} with sslmode={mode} in the database URL: asyncpg "
                    "would ignore them (libpq uses them when the server offers TLS); use "
                    "sslmode=require, verify-ca or verify-full, or DB_DRIVER=psycopg"
                )
            return "prefer"
        # libpq's default root certificate, used when it exists, as libpq uses it.
        rootcert = self.param("sslrootcert") or _default_root_cert()
        if mode == "verify-ca" and rootcert is None:
            # The system CAs without the host name would accept any certificate they signed,
            # for any host; libpq refuses verify-ca without a root certificate too.
            raise ConfigurationError(
                "sslmode=verify-ca in the database URL needs sslrootcert (the CA that signed "
                "the server's certificate; ~/.postgresql/root.crt does not exist); or use "
                "sslmode=verify-full, which checks the host name against the system CAs"
            )
        if mode == "require" and rootcert is None:
            # libpq's `require` encrypts but does not verify: do the same.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            cafile = None if rootcert in (None, "system") else rootcert
            try:
                ctx = ssl.create_default_context(cafile=cafile)
            except ssl.SSLError as e:
                raise ConfigurationError(
                    f"sslrootcert={rootcert!r} in the database URL: not a PEM certificate "
                    f"file ({e.reason or e})"
                ) from None
            # libpq: a root certificate with `require` behaves as verify-ca.
            ctx.check_hostname = mode == "verify-full"
        self._load_client_cert(ctx, files)
        return ctx

    def _load_client_cert(self, ctx: ssl.SSLContext, files: dict[str, str]) -> None:
        cert, key = files.get("sslcert"), files.get("sslkey")
        if key and not cert:
            raise ConfigurationError(
                "sslkey without sslcert in the database URL: asyncpg needs the certificate "
                "file too; add sslcert, or use DB_DRIVER=psycopg"
            )
        if not cert:
            return
        secret = self.param("sslpassword") or ""
        try:
            # A password callback, even an empty one: OpenSSL would otherwise prompt on the
            # terminal for an encrypted key.
            ctx.load_cert_chain(cert, key, password=lambda: secret)
        except ssl.SSLError as e:
            raise ConfigurationError(
                f"sslcert={cert!r}" + (f" and sslkey={key!r}" if key else "") + " in the "
                f"database URL: cannot load the client certificate and key ({e.reason or e}); "
                "give the key in sslkey, and its password in sslpassword"
            ) from None

    def _asyncpg_kwargs(self, connect_timeout_s: float) -> dict[str, Any]:
        url = self.url
        endpoints = self.endpoints
        hosts = [host for host, _ in endpoints]
        ports = [port for _, port in endpoints]
        kwargs: dict[str, Any] = {
            # Always a host: given none, asyncpg would try PGHOST or its defaults (local
            # sockets, localhost:5432) and send the credentials there.
            "host": hosts[0] if len(hosts) == 1 else hosts,
            "port": ports[0] if len(ports) == 1 else ports,
            "user": url.username,
            "password": url.password,
            "database": url.database,
            "ssl": self._ssl_for_asyncpg(),
            "timeout": connect_timeout_s,
        }
        server_settings: dict[str, str] = {}
        for key, raw in url.query.items():
            value = raw if isinstance(raw, str) else raw[-1]
            if key in _ASYNCPG_CONSUMED or key in _ASYNCPG_IGNORED:
                continue
            # As libpq: the query's user, password and dbname win over the authority's.
            if key == "password":
                kwargs["password"] = value
            elif key == "user":
                kwargs["user"] = value
            elif key == "dbname":
                kwargs["database"] = value
            elif key == "target_session_attrs":
                kwargs[key] = _session_attrs(value)  # asyncpg tries the hosts as libpq does
            elif key == "connect_timeout":
                kwargs["timeout"] = float(_int(value, key) or connect_timeout_s)
            elif key in ("application_name", "options"):
                # Neon's proxy reads `options=endpoint=<id>` for SNI-less clients.
                server_settings[key] = unquote(value)
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
        self._tls_files(params["sslmode"])
        if params.get("sslrootcert") == "system":
            require_libpq(psycopg.pq.version(), "sslrootcert=system", LIBPQ_SYSTEM_ROOTS)
        if "target_session_attrs" in params:
            _session_attrs(params["target_session_attrs"])
        # libpq's connect_timeout is whole seconds, and values under 2 are raised to 2.
        params.setdefault("connect_timeout", str(max(2, round(connect_timeout_s))))
        # Every host with its port, spelled out: libpq's defaults (PGHOST, PGPORT) never
        # fill a gap, so both drivers go to the same places.
        endpoints = self.endpoints
        params["host"] = ",".join(host for host, _ in endpoints)
        params["port"] = ",".join(str(port) for _, port in endpoints)
        # As libpq itself: `user=`, `password=` and `dbname=` in the query win.
        if url.username:
            params.setdefault("user", url.username)
        if url.password is not None:
            params.setdefault("password", url.password)
        if url.database:
            params.setdefault("dbname", url.database)
        try:
            return make_conninfo("", **params)
        except psycopg.ProgrammingError as e:  # an option libpq does not know
            raise ConfigurationError(
                f"the database URL has a parameter libpq rejects: {e}"
            ) from None


def require_libpq(version: int, what: str, needed: int) -> None:
    """Refuse `what` when psycopg's libpq (`psycopg.pq.version()`, e.g. 160002) is older
    than `needed`: an older libpq would read it as something else."""
    if version < needed:
        raise ConfigurationError(
            f"{what} in the database URL needs libpq {needed // 10000} or later, and psycopg "
            f"here uses libpq {version // 10000}.{version % 10000}; use DB_DRIVER=asyncpg, or "
            "a psycopg built with a newer libpq"
        )


def _default_root_cert() -> str | None:
    try:
        path = Path.home() / ".postgresql" / "root.crt"
    except (RuntimeError, KeyError):  # no home folder
        return None
    return str(path) if path.is_file() else None


def _check_host(host: str) -> None:
    """One entry of a `?host=` list, which libpq reads verbatim (no brackets, no port)."""
    if not host:
        raise ConfigurationError(
            "the database URL's host list has an empty entry: libpq would connect to its "
            "default host there (a local socket or localhost); name every host"
        )
    if host.startswith("/"):
        return  # a Unix socket directory
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigurationError(
                f"host={host!r} in the database URL: libpq reads it as one host name, port "
                "and all; put ports in port= (host=h1,h2&port=5432,5433)"
            ) from None


def _port(value: str) -> int:
    if not value:
        return DEFAULT_PORT  # libpq: an empty entry in a port list is the default port
    number = _int(value, "port")
    if number is None or not 0 < number < 65536:
        raise ConfigurationError(f"port={value!r} in the database URL is not a port number")
    return number


def _session_attrs(value: str) -> str:
    if value not in SESSION_ATTRS:
        raise ConfigurationError(
            f"target_session_attrs={value!r} in the database URL is not one of "
            f"{', '.join(SESSION_ATTRS)}"
        )
    return value


def _int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} in the database URL is not a number") from None


def _refuse_ambiguous_split(raw: str) -> None:
    """libpq takes the credentials up to the first '@' only if no '/' comes before it;
    SQLAlchemy reads a password up to the first '@' wherever it is. An unencoded '@' in a
    password puts the rest of it in the host (and in logs); a '/' in one makes libpq read
    the user as the host. Nothing of the URL is shown: any part may be the password."""
    _, sep, rest = raw.partition("://")
    if not sep:
        return
    ats = rest.count("@")
    if ats > 1 or (ats == 1 and "/" in rest[: rest.index("@")]):
        raise ConfigurationError(
            "the database URL has an '@' or '/' that is not percent-encoded where libpq and "
            "SQLAlchemy would split the URL differently (most often an '@' in the password, "
            "whose rest would be read as the host): URL not shown, as it holds the password; "
            + _ENCODE_HINT
        )


def _lift_host_list(raw: str) -> tuple[str, dict[str, str]]:
    """libpq's multi-host authority (`h1:5432,[::1]:5433`), which SQLAlchemy cannot parse:
    the URL without it, and the `host` and `port` query lists that say the same."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        return raw, {}
    at = rest.find("@")  # at most one by now, with no '/' before it
    userinfo, hostpart = (rest[: at + 1], rest[at + 1 :]) if at >= 0 else ("", rest)
    ends = [i for i in (hostpart.find("/"), hostpart.find("?")) if i >= 0]
    end = min(ends, default=len(hostpart))
    authority, tail = hostpart[:end], hostpart[end:]
    if "," not in authority:
        return raw, {}
    hosts: list[str] = []
    ports: list[str] = []
    for entry in authority.split(","):
        if entry.startswith("["):
            close = entry.find("]")
            after = entry[close + 1 :] if close > 0 else "?"
            if after and not after.startswith(":"):
                raise ConfigurationError(
                    "the database URL's host list has a malformed IPv6 address: write it as "
                    "[2001:db8::1]:5432"
                )
            host, port = entry[1:close], after[1:]
        else:
            host, _, port = entry.partition(":")
        hosts.append(unquote(host))
        ports.append(unquote(port))
    lifted = {"host": ",".join(hosts)}
    if any(ports):
        lifted["port"] = ",".join(ports)
    return f"{scheme}://{userinfo}{tail}", lifted


def parse_url(raw: str) -> DatabaseURL:
    """Parse any Postgres URL form: postgres://, postgresql://, postgresql+asyncpg://,
    postgresql+psycopg://, with Neon's query parameters and libpq's host lists."""
    raw = raw.strip()
    _refuse_ambiguous_split(raw)
    raw, lifted = _lift_host_list(raw)
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
    # libpq: the query's host and port win over the authority's list.
    lifted = {key: value for key, value in lifted.items() if key not in url.query}
    if lifted:
        url = url.update_query_dict(lifted)
    parsed = DatabaseURL(url, _SCHEMES[url.drivername])  # type: ignore[arg-type]
    parsed.endpoints  # noqa: B018  # checked now: start-up and `neondb url` say what is wrong
    return parsed
