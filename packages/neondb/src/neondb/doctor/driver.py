"""The doctor's login, with the app's driver used directly (SQLAlchemy would hide the
server's process id and the TLS object): one small adapter per driver. Statements are
never prepared by name, so the probes work through a transaction pooler too."""

from __future__ import annotations

import asyncio
from typing import Any

from neondb.doctor.fixes import login_fix
from neondb.doctor.network import NetworkError
from neondb.errors import sqlstate_of
from neondb.settings import Driver
from neondb.url import DatabaseURL

__all__ = ["Probe", "login"]


class Probe:
    """One driver connection in autocommit: each statement is its own transaction."""

    def __init__(self, driver: Driver, conn: Any) -> None:
        self.driver = driver
        self.conn = conn

    @property
    def key_pid(self) -> int:
        """The process id the server announced at login (BackendKeyData); a pooler or a
        proxy sends its own."""
        if self.driver == "asyncpg":
            return int(self.conn.get_server_pid())
        return int(self.conn.info.backend_pid)

    @property
    def tls(self) -> str:
        """The TLS this connection uses, as the driver sees it."""
        if self.driver == "asyncpg":
            obj = self.conn._transport.get_extra_info("ssl_object")
            return str(obj.version()) if obj is not None else "none"
        return "in use" if self.conn.pgconn.ssl_in_use else "none"

    async def row(self, sql: str) -> tuple[Any, ...]:
        if self.driver == "asyncpg":
            return tuple(await self.conn.fetchrow(sql))
        cur = await self.conn.execute(sql)
        return tuple(await cur.fetchone())

    async def ping(self) -> None:
        """One round trip (asyncpg: the simple query protocol, no prepare)."""
        await self.conn.execute("SELECT 1")

    async def close(self) -> None:
        try:
            async with asyncio.timeout(2):
                await self.conn.close()
        except Exception:
            if self.driver == "asyncpg":
                self.conn.terminate()


async def login(url: DatabaseURL, driver: Driver, timeout_s: float) -> Probe:
    """Log in as the app would; NetworkError with the server's words and a fix if refused."""
    spec = url.spec(driver, connect_timeout_s=timeout_s)
    try:
        async with asyncio.timeout(timeout_s + 1):
            if driver == "asyncpg":
                import asyncpg

                conn = await asyncpg.connect(**spec.kwargs, statement_cache_size=0)
            else:
                import psycopg

                conn = await psycopg.AsyncConnection.connect(
                    spec.kwargs["conninfo"], autocommit=True, prepare_threshold=None
                )
    except TimeoutError:
        raise NetworkError(
            f"{driver} could not log in within DB_CONNECT_TIMEOUT_S={timeout_s:g} s",
            "the server answered the probes but not the login in time: a busy server or "
            "pooler, or a Neon compute still waking (raise DB_CONNECT_TIMEOUT_S)",
        ) from None
    except Exception as e:
        said = str(e).strip().splitlines()
        message = said[-1] if said else type(e).__name__
        for line in said:  # libpq: the server's words come after "FATAL:"
            if "FATAL:" in line:
                message = line.split("FATAL:", 1)[1].strip()
        if url.url.password:
            message = message.replace(url.url.password, "***")
        user, database = url.url.username or "", url.url.database or ""
        fix = login_fix(sqlstate_of(e), message, user=user, database=database)
        raise NetworkError(f"{driver} could not log in: {message}", fix) from None
    return Probe(driver, conn)
