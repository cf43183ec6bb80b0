"""What a request costs in serverless mode (DB_SERVERLESS=true) against a pooled connection:
round trips (FaultProxy counts) and milliseconds, with BENCH_DELAY_MS (default 5) added
each way, for both drivers. The embedded server (or DATABASE_URL), plain TCP, trust or the
URL's auth: TLS and SCRAM add their own round trips on a real Neon endpoint.

    .venv/bin/python -m bench.serverless_connect
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from sqlalchemy import text

from bench.servers import Upstream
from neondb import Database, DatabaseSettings, parse_url
from neondb.proxy import FaultProxy

N = int(os.environ.get("BENCH_N", "30"))
HEAD = ("driver", "mode", "round trips per read", "ms to open a connection", "ms per read")


def settings(url: str, driver: str, *, serverless: bool) -> DatabaseSettings:
    return DatabaseSettings(
        _env_file=None,
        database_url=url,
        db_driver=driver,
        db_serverless=serverless,
        db_pool_min=1,
        db_migrate_on_start=False,
    )


async def measure(url: str, proxy: FaultProxy, driver: str, *, serverless: bool) -> str:
    db = Database(settings(url, driver, serverless=serverless))
    await db.start()
    try:
        async with db.read_session() as s:  # warm: the dialect's first connect, the cache
            await s.execute(text("SELECT 1"))
        opens: list[float] = []
        requests: list[float] = []
        trips: list[int] = []
        for _ in range(N):
            if serverless:
                started = time.perf_counter()
                conn = await db.engine.connect()
                opens.append((time.perf_counter() - started) * 1000)
                await conn.close()
            await asyncio.sleep(0.02)
            proxy.reset_counts()
            started = time.perf_counter()
            async with db.read_session() as s:
                await s.execute(text("SELECT 1"))
            requests.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.02)
            trips.append(proxy.round_trips)
        open_ms = f"{statistics.median(opens):.1f}" if opens else "-"
        mode = "serverless" if serverless else "pool (warm)"
        return (
            f"| {driver} | {mode} | {statistics.median(trips):.0f} | {open_ms} | "
            f"{statistics.median(requests):.1f} |"
        )
    finally:
        await db.stop()


async def main() -> None:
    upstream = Upstream.open()
    (host, port), admin = upstream.host_port, upstream.admin_url
    delay_ms = float(os.environ.get("BENCH_DELAY_MS", "5"))
    try:
        with FaultProxy(host, port) as proxy:
            url = (
                parse_url(admin)
                .url.set(host="127.0.0.1", port=proxy.port)
                .difference_update_query(["host", "port", "sslmode"])
                .update_query_dict({"sslmode": "disable"})
                .render_as_string(hide_password=False)
            )
            proxy.delay_s = delay_ms / 1000
            print(f"{delay_ms:g} ms added each way; medians of {N}")
            print(f"| {' | '.join(HEAD)} |")
            print("|---|---|---|---|---|")
            for driver in ("asyncpg", "psycopg"):
                for serverless in (True, False):
                    print(await measure(url, proxy, driver, serverless=serverless))
    finally:
        if upstream.embedded is not None:
            upstream.embedded.stop()


if __name__ == "__main__":
    asyncio.run(main())
