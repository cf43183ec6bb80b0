"""Scale-out: `todo-api serve --workers 2` through a local PgBouncer in transaction mode, as
several processes share one Neon endpoint through its pooler. Both workers start at once
(and migrate once, on the direct endpoint), both serve, and every acknowledged write is
there: counts and statuses, no timings (those are in `make bench`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from reliability_servers import FreshDB, PgBouncer, free_port
from reliability_support import AUTH_SECRET, auth_headers

from neondb.testing import admin_execute
from todo_api.models import MIGRATIONS

WRITES = 200  # per round
ROUNDS = 5


@pytest.fixture
def two_workers(
    fresh_db: FreshDB, start_pgbouncer: Callable[..., PgBouncer], tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    bouncer = start_pgbouncer([fresh_db.role], pool_size=4)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_", "AUTH_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        DATABASE_URL=fresh_db.url(port=bouncer.port),
        DATABASE_DIRECT_URL=fresh_db.url(),
        DB_POOLER="transaction",
        DB_POOL_MIN="2",
        DB_POOL_MAX="4",
        AUTH_SECRET=AUTH_SECRET,
        APP_LOG_FORMAT="json",
        APP_ACCESS_LOG="true",
    )
    log_path = tmp_path / "serve.log"
    cli = Path(sys.executable).parent / "todo-api"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(cli), "serve", "--workers", "2", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        yield f"http://127.0.0.1:{port}", server, log_path
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def workers_of(server: subprocess.Popen[str]) -> list[psutil.Process]:
    """uvicorn's worker processes (spawned by multiprocessing; not its resource tracker)."""
    children = psutil.Process(server.pid).children()
    return [p for p in children if any("spawn_main" in part for part in p.cmdline())]


def output_of(log_path: Path) -> str:
    return log_path.read_text(errors="replace")


async def wait_ready(base: str, server: subprocess.Popen[str], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        while time.monotonic() < deadline:
            assert server.poll() is None, output_of(log_path)
            try:
                ready = [(await client.get("/health/db")).status_code for _ in range(4)]
                if ready == [200] * 4 and len(workers_of(server)) == 2:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail(f"todo-api serve --workers 2 did not become ready:\n{output_of(log_path)}")


@pytest.mark.timeout(180)
async def test_two_workers_behind_pgbouncer_serve_and_keep_every_write(
    two_workers: tuple[str, subprocess.Popen[str], Path], fresh_db: FreshDB
) -> None:
    base, server, log_path = two_workers
    await wait_ready(base, server, log_path)
    statuses: list[int] = []
    ids: list[int] = []

    async def writer(n: int, first: int) -> None:
        # A user per client: one user's share of a pool is a quarter of it (a 429 beyond).
        headers = auth_headers(f"scale-out-{n}")
        # A new connection per request, so the kernel may hand requests to either worker.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            for i in range(first + n, first + WRITES, 8):
                r = await client.post("/api/tasks", json={"title": f"t{i}"}, headers=headers)
                statuses.append(r.status_code)
                if r.status_code == 201:
                    ids.append(r.json()["id"])

    def served_by() -> Counter[int]:
        """Each access line carries the pid of the worker that wrote it."""
        lines = [json.loads(x) for x in output_of(log_path).splitlines() if x.startswith("{")]
        return Counter(
            rec["pid"]
            for rec in lines
            if rec.get("logger") == "neondb.access" and "POST /api/tasks" in rec["message"]
        )

    # Which worker accepts a connection is the kernel's choice: rounds of writes until both
    # have served (bounded: a worker that never serves fails the test).
    pids = {p.pid for p in workers_of(server)}
    rounds = 0
    while rounds < ROUNDS and set(served_by()) != pids:
        await asyncio.gather(*(writer(n, rounds * WRITES) for n in range(8)))
        rounds += 1
    # A worker writes its access line after the response has gone: let the last ones land.
    for _ in range(50):
        if sum(served_by().values()) >= rounds * WRITES:
            break
        await asyncio.sleep(0.1)
    assert set(served_by()) == pids
    assert sum(served_by().values()) == rounds * WRITES
    assert Counter(statuses) == {201: rounds * WRITES}
    rows = fresh_db.execute("SELECT id FROM tasks WHERE user_id LIKE 'scale-out-%'")
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert len(set(ids)) == rounds * WRITES
    # Two processes started at once migrated once: one alembic_version row, at head.
    assert admin_execute(fresh_db.url(), "SELECT version_num FROM alembic_version") == [
        (MIGRATIONS.head(),)
    ]
