"""What the layer will connect to and how, decided from the settings without connecting:
the URL (or the embedded server), the driver and why, and the endpoint kind and why.

`Database` uses it to build its engines; the CLIs and the start-up banner use it to say
what will happen before anything does.
"""

from __future__ import annotations

from dataclasses import dataclass

from neondb.errors import ConfigurationError
from neondb.extras import installed
from neondb.settings import DatabaseSettings, Driver
from neondb.url import DatabaseURL, parse_url

__all__ = ["Target", "choose_driver", "direct_url", "is_behind_pooler", "parse_setting"]


def parse_setting(name: str, raw: str) -> DatabaseURL:
    """`parse_url`, with the variable's name in front of any error."""
    try:
        return parse_url(raw)
    except ConfigurationError as e:
        raise ConfigurationError(f"{name}: {e}") from None


def is_behind_pooler(settings: DatabaseSettings, url: DatabaseURL | None) -> tuple[bool, str]:
    """Whether statements go through a transaction pooler, and why we think so."""
    mode = settings.db_pooler
    if mode != "auto":
        return mode == "transaction", f"DB_POOLER={mode}"
    if url is not None and url.is_pooler:
        return True, "the host name has -pooler (Neon's PgBouncer, transaction mode)"
    return False, "direct endpoint (no -pooler in the host name; DB_POOLER=auto)"


def direct_url(settings: DatabaseSettings, url: DatabaseURL | None) -> DatabaseURL | None:
    """Where schema changes go when the app's URL is a pooler's (Neon: run migrations on the
    direct endpoint): DATABASE_DIRECT_URL, else the URL with `-pooler` dropped from its
    hosts. None when the app's URL is already direct, or no direct URL can be known."""
    if settings.database_direct_url is not None:
        return parse_setting("DATABASE_DIRECT_URL", settings.database_direct_url.get_secret_value())
    if url is None or not url.is_pooler:
        return None
    return url.with_hosts([_without_pooler(host) for host in url.hosts])


def _without_pooler(host: str) -> str:
    first, _, rest = host.partition(".")
    return first.replace("-pooler", "") + (f".{rest}" if rest else "")


def choose_driver(
    settings: DatabaseSettings, url: DatabaseURL | None, *, pooler: bool
) -> tuple[Driver, str]:
    """DB_DRIVER, else the URL's (`+asyncpg`/`+psycopg`), else psycopg behind a transaction
    pooler (asyncpg cannot cache statements there and pays two round trips for each:
    prepare, then execute; psycopg sends both in one), else asyncpg. A default the
    environment lacks gives way to the driver that is installed."""
    if settings.db_driver:
        return settings.db_driver, "DB_DRIVER says so"
    if url is not None and url.driver_hint:
        return url.driver_hint, f"the URL names it (postgresql+{url.driver_hint}://)"
    preferred: Driver = "psycopg" if pooler else "asyncpg"
    other: Driver = "asyncpg" if pooler else "psycopg"
    if not installed(preferred) and installed(other):
        return other, f"{preferred} is not installed (neondb[{preferred}])"
    if pooler:
        return preferred, (
            "behind a transaction pooler psycopg sends each statement in one round trip, "
            "asyncpg in two (prepare, execute)"
        )
    return preferred, "the default on a direct endpoint (DB_DRIVER or +psycopg to change)"


@dataclass(frozen=True)
class Target:
    """The primary database as the settings describe it (`url` None: the embedded server)."""

    settings: DatabaseSettings
    url: DatabaseURL | None
    driver: Driver
    driver_reason: str
    pooler: bool
    pooler_reason: str

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, url: DatabaseURL | None = None) -> Target:
        """Raises ConfigurationError, naming the variable, for a URL that cannot work."""
        if url is None and settings.database_url is not None:
            url = parse_setting("DATABASE_URL", settings.database_url.get_secret_value())
        pooler, pooler_reason = is_behind_pooler(settings, url)
        driver, driver_reason = choose_driver(settings, url, pooler=pooler)
        return cls(settings, url, driver, driver_reason, pooler, pooler_reason)

    @property
    def where(self) -> str:
        if self.url is None:
            data = self.settings.db_data_dir.resolve()
            return f"embedded PostgreSQL server (data in {data})"
        return self.url.display

    def describe(self) -> str:
        """One line: where, the driver, and whether a pooler or serverless mode is on."""
        parts = [self.where, f"driver {self.driver}"]
        if self.pooler:
            parts.append("behind a transaction pooler")
        if self.settings.db_serverless:
            parts.append("serverless (no pool between requests)")
        read = self.settings.database_read_url
        if read is not None:
            replica = parse_setting("DATABASE_READ_URL", read.get_secret_value())
            parts.append(f"reads from replica {replica.display}")
        return ", ".join(parts)
