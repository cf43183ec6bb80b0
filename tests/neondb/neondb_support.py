"""Helpers shared by the neondb tests (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from neondb import Database, DatabaseSettings
from neondb.proxy import FaultProxy
from neondb.testing import admin_execute
from neondb.url import parse_url

DRIVERS = ("asyncpg", "psycopg")


def make_settings(url: str | None, **overrides: Any) -> DatabaseSettings:
    """Settings for a test: explicit values, no `.env`, small pool, short waits."""
    values: dict[str, Any] = {
        "database_url": url,
        "db_pool_min": 1,
        "db_pool_max": 5,
        "db_pool_timeout_s": 10.0,
        "db_connect_timeout_s": 5.0,
        "db_retry_backoff_s": 0.01,
        "db_startup_timeout_s": 10.0,
        "db_migrate_on_start": False,
    }
    values.update(overrides)
    return DatabaseSettings(_env_file=None, **values)


@asynccontextmanager
async def open_database(url: str, **overrides: Any) -> AsyncIterator[Database]:
    """A started `Database` on `url` (settings from `make_settings`), stopped on exit."""
    db = Database(make_settings(url, **overrides))
    await db.start()
    try:
        yield db
    finally:
        await db.stop()


def upstream_of(url: str) -> tuple[str, int]:
    """(host or Unix socket folder, port) of a server URL, as FaultProxy wants them."""
    parsed = parse_url(url)
    port = parsed.url.port or int(parsed.param("port") or 5432)
    return parsed.host, port


def proxied_url(proxy: FaultProxy, url: str) -> str:
    """`url` (user, password, database, options kept) reached through `proxy`."""
    parsed = parse_url(url).url
    return (
        parsed.set(host="127.0.0.1", port=proxy.port)
        .difference_update_query(["host", "port", "sslmode"])
        .update_query_dict({"sslmode": "disable"})
        .render_as_string(hide_password=False)
    )


async def settled_round_trips(proxy: FaultProxy) -> int:
    """The proxy's round-trip count once bytes in flight have been forwarded (the proxy
    runs on its own thread)."""
    await asyncio.sleep(0.05)
    return proxy.round_trips


def role_of(url: str) -> str:
    """The user name in `url`."""
    name = parse_url(url).url.username
    assert name, url
    return name


def with_query(url: str, **params: str) -> str:
    """`url` with these query parameters added (or replaced)."""
    return parse_url(url).url.update_query_dict(params).render_as_string(hide_password=False)


def connections_of(url: str, *, role: str | None = None, application: str | None = None) -> int:
    """How many client backends the server has for `role` or `application_name` now."""
    rows = admin_execute(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND pid <> pg_backend_pid() "
        "AND (%(role)s::text IS NULL OR usename = %(role)s) "
        "AND (%(app)s::text IS NULL OR application_name = %(app)s)",
        {"role": role, "app": application},
    )
    return int(rows[0][0])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def backend_pids(db: Database) -> set[int]:
    """Server process ids of the connections in `db`'s pool (checked out one by one)."""
    stats = db.pool_stats()["primary"]
    conns = [await db.engine.connect() for _ in range(stats["checked_in"])]
    try:
        return {(await c.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one() for c in conns}
    finally:
        for c in conns:
            await c.close()


# The TLS + SCRAM server of conftest.py --------------------------------------------------

TLS_USER = "neon_user"
TLS_PASSWORD = "Tls-pa55word-9f3c1e"  # distinctive, so that a leak is easy to spot
TLS_DATABASE = "neon_db"


@dataclass(frozen=True)
class TLSServer:
    port: int
    ca_file: Path  # the CA that signed the server certificate (CN/SAN localhost, 127.0.0.1)
    other_ca_file: Path  # a CA that did not sign it

    def url(
        self,
        query: str = "sslmode=require&channel_binding=require",
        *,
        password: str = TLS_PASSWORD,
        host: str = "localhost",
    ) -> str:
        """This server's URL in the Neon console form."""
        suffix = f"?{query}" if query else ""
        return f"postgresql://{TLS_USER}:{password}@{host}:{self.port}/{TLS_DATABASE}{suffix}"


async def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 10.0, every_s: float = 0.02
) -> None:
    """Poll `predicate` (a bounded number of times) until it holds; fail after `timeout_s`."""
    for _ in range(max(1, int(timeout_s / every_s))):
        if predicate():
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def active_statements(url: str, needle: str) -> int:
    """How many other backends are running a statement containing `needle` now."""
    rows = admin_execute(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND pid <> pg_backend_pid() AND position(%s in query) > 0",
        (needle,),
    )
    return int(rows[0][0])


def add_slow_commit_trigger(url: str, table: str, sleep_s: float = 2.0) -> None:
    """Make every transaction that inserted into `table` spend `sleep_s` in its COMMIT: a
    deferred constraint trigger runs then, while the client waits for COMMIT's answer."""
    admin_execute(
        url,
        f"CREATE FUNCTION {table}_slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_sleep({sleep_s}); RETURN NULL; END $$",
    )
    admin_execute(
        url,
        f"CREATE CONSTRAINT TRIGGER {table}_slow_commit AFTER INSERT ON {table} "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_slow_commit()",
    )


async def terminate_during_commit(url: str, *, timeout_s: float = 5.0) -> int:
    """Wait until a backend is sleeping inside a COMMIT (see `add_slow_commit_trigger`),
    then terminate it from an admin connection, as a compute restart would; its pid."""
    find = (
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND wait_event = 'PgSleep' "
        "AND query ILIKE 'commit%' AND pid <> pg_backend_pid()"
    )
    for _ in range(int(timeout_s / 0.02)):
        rows = await asyncio.to_thread(admin_execute, url, find)
        if rows:
            (pid,) = rows[0]
            await asyncio.sleep(0.2)  # well inside the trigger's sleep
            await asyncio.to_thread(admin_execute, url, "SELECT pg_terminate_backend(%s)", (pid,))
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError(f"no backend in COMMIT within {timeout_s} s")


async def cut(proxy: FaultProxy) -> None:
    """`proxy.drop_all()`, then a moment for the cut to reach both ends: the proxy works on
    its own thread, and the client's loop must see the connection's end."""
    proxy.drop_all()
    await asyncio.sleep(0.1)


# An ORM model for the tests of session methods NeonSession does not wrap (get, add + flush).
class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
