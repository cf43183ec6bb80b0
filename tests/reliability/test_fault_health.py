"""/health/db tells "pool busy" (200, `busy: true`) from "database down" (503) (issue 8,
item 3): with every pooled connection held by one heavy user, the instance is healthy."""

from __future__ import annotations

import asyncio

from neondb_support import wait_until
from reliability_servers import FreshDB, PgServer
from reliability_support import build_app, make_settings, serve


async def test_a_saturated_pool_is_busy_not_down_and_a_stopped_server_is_503(
    pg_server: PgServer, fresh_db: FreshDB, driver: str
) -> None:
    settings = make_settings(
        fresh_db.url(), db_driver=driver, db_pool_min=2, db_pool_max=2, db_pool_timeout_s=10
    )
    async with serve(build_app(settings)) as client:
        db = client.db
        # Two requests hold both connections in pg_sleep, a third waits for one.
        heavy = [
            asyncio.create_task(client.call("GET", "/_probe/sleep", params={"s": 2.5}))
            for _ in range(3)
        ]
        await wait_until(
            lambda: (
                db.pool_stats()["primary"]["checked_out"] == 2
                and db.pool_stats()["primary"]["waiting"] >= 1
            ),
            timeout_s=5,
        )
        for _ in range(3):
            r = await client.http.get("/health/db")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["status"] == "healthy"
            assert body["busy"] is True
            assert body["pool"]["primary"]["checked_out"] == 2
            assert body["pool"]["primary"]["max"] == 2
        assert [o.status for o in await asyncio.gather(*heavy)] == [200, 200, 200]

        r = await client.http.get("/health/db")
        assert r.status_code == 200
        assert r.json()["busy"] is False

        pg_server.stop("immediate")
        try:
            r = await client.http.get("/health/db")
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"].isdigit()
            assert r.json()["status"] == "unhealthy"
        finally:
            pg_server.start()
