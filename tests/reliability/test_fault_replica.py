"""Read replicas against a real streaming standby (issue 9, item 1).

The replica is a hot standby made with pg_basebackup from a primary of its own (the
`replication` fixture); `pg_stat_activity` on each server shows where the statements went.
Every test runs with both drivers, through HTTP against the Todo API.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from reliability_servers import FreshDB, Replication, set_apply_delay
from reliability_support import (
    AUTH_SECRET,
    USER,
    Client,
    build_app,
    make_settings,
    metric,
    scrape,
    serve,
)

from neondb.proxy import FaultProxy
from todo_api.auth import issue_token
from todo_api.settings import AppSettings


def replica_settings(
    replication: Replication, db: FreshDB, driver: str, **overrides: object
) -> AppSettings:
    return make_settings(
        db.url(),
        database_read_url=replication.replica_url(db),
        db_driver=driver,
        **overrides,
    )


async def on_replica(client: Client) -> bool:
    o = await client.call("GET", "/_probe/recovery")
    assert o.status == 200, o
    assert isinstance(o.body, dict)
    return bool(o.body["in_recovery"])


async def test_reads_go_to_the_replica_in_one_round_trip_and_writes_to_the_primary(
    replication: Replication, replicated_db: FreshDB, driver: str
) -> None:
    db = replicated_db
    with FaultProxy("127.0.0.1", replication.replica.port) as proxy:
        settings = make_settings(
            db.url(),
            database_read_url=db.url(port=proxy.port),
            db_driver=driver,
            db_read_your_writes_s=0,
        )
        async with serve(build_app(settings)) as client:
            replication.wait_replayed()  # the migrations the app ran on the primary
            created = await client.call("POST", "/api/tasks", json={"title": "on the primary"})
            assert created.status == 201, created
            assert isinstance(created.body, dict)
            replication.wait_replayed()
            path = f"/api/tasks/{created.body['id']}"
            assert (await client.call("GET", path)).status == 200  # warm: asyncpg prepares
            await asyncio.sleep(0.05)
            proxy.reset_counts()
            got = await client.call("GET", path)
            assert got.status == 200, got
            await asyncio.sleep(0.05)
            assert proxy.round_trips == 1  # a replica read: one statement, one round trip
            assert await on_replica(client) is True
            primary, replica = replication.primary, replication.replica
            assert replication.queries_on(primary, db.name, "INSERT INTO") == 1
            assert replication.queries_on(replica, db.name, "INSERT INTO") == 0
            assert replication.queries_on(replica, db.name, "pg_is_in_recovery") == 1
            assert replication.queries_on(primary, db.name, "pg_is_in_recovery") == 0


async def test_a_replica_down_never_refuses_the_primary_and_reads_fall_back(
    replication: Replication, replicated_db: FreshDB, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping the replica: every write 201, every read 200 (served by the primary, within
    the request), the primary's circuit stays closed, /health/db 200 naming the replica
    unhealthy; the replica's circuit opens; once it is back, reads return to it."""
    settings = replica_settings(
        replication,
        replicated_db,
        driver,
        db_read_your_writes_s=0,  # every read tries the replica: nothing pins it
        db_breaker_failures=2,
        db_breaker_reset_s=1.0,
    )
    async with serve(build_app(settings)) as client:
        replication.wait_replayed()
        assert await on_replica(client) is True
        replication.replica.stop("immediate")
        statuses: list[int | None] = []
        for i in range(8):
            created = await client.call("POST", "/api/tasks", json={"title": f"t{i}"})
            statuses.append(created.status)
            assert isinstance(created.body, dict), created
            got = await client.call("GET", f"/api/tasks/{created.body['id']}")
            statuses.append(got.status)
            assert got.status == 200, got
            assert await on_replica(client) is False
        assert statuses == [201, 200] * 8
        fallbacks = [
            r.getMessage() for r in caplog.records if "served by the primary" in r.getMessage()
        ]
        assert len(fallbacks) == 1, fallbacks  # logged, at most once per 10 s (with a count)
        assert client.db.breaker.state == "closed"
        assert client.db.read_breaker.state in ("open", "half_open")

        health = await client.http.get("/health/db")
        assert health.status_code == 200, health.text
        body = health.json()
        assert body["status"] == "healthy"
        assert body["breaker"]["state"] == "closed"
        assert body["replica"]["status"] == "unhealthy"
        assert body["replica"]["reads"] == "primary"

        text = await scrape(client)
        name = client.db.name
        assert metric(text, "neondb_breaker_state", db=name, role="primary") == 0
        assert metric(text, "neondb_breaker_state", db=name, role="replica") in (1, 2)
        reads = "neondb_reads_on_primary_total"
        assert metric(text, reads, db=name, reason="replica_down") >= 1
        assert metric(text, reads, db=name, reason="circuit_open") >= 1

        replication.replica.start()
        deadline = time.monotonic() + 20
        while not await on_replica(client):
            assert time.monotonic() < deadline, "reads did not return to the replica"
            await asyncio.sleep(0.2)
        assert client.db.read_breaker.state == "closed"
        health = await client.http.get("/health/db")
        assert health.json()["replica"]["status"] == "healthy"


async def test_read_your_writes_against_a_lagging_replica(
    replication: Replication, replicated_db: FreshDB, driver: str
) -> None:
    """The replica applies commits 2 s late (`recovery_min_apply_delay`). The client that
    wrote reads its task at once (its reads go to the primary for DB_READ_YOUR_WRITES_S);
    another client of the same user, which has not written, reads the replica and misses it
    until the replica catches up, unless it asks for the primary."""
    settings = replica_settings(replication, replicated_db, driver, db_read_your_writes_s=30)
    async with serve(build_app(settings)) as client:
        replication.wait_replayed()
        set_apply_delay(replication.replica, 2000)
        writer = client.headers
        other = {"Authorization": f"Bearer {issue_token(AUTH_SECRET, USER, ttl_s=7200)}"}
        assert other != writer

        created = await client.call("POST", "/api/tasks", json={"title": "mine, at once"})
        assert created.status == 201, created
        assert isinstance(created.body, dict)
        path = f"/api/tasks/{created.body['id']}"

        got = await client.call("GET", path)
        assert got.status == 200, got  # the writer: on the primary

        client.headers = other
        lagging = await client.call("GET", path)
        assert lagging.status == 404, lagging  # the replica has not applied it yet
        client.headers = {**other, "X-Read-Consistency": "primary"}
        asked = await client.call("GET", path)
        assert asked.status == 200, asked
        client.headers = other

        replication.wait_replayed()
        assert (await client.call("GET", path)).status == 200  # the replica caught up
        assert await on_replica(client) is True

        text = await scrape(client)
        reads = "neondb_reads_on_primary_total"
        assert metric(text, reads, db=client.db.name, reason="wrote") >= 1
        assert metric(text, reads, db=client.db.name, reason="asked") >= 1
