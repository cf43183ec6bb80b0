"""neondb.doctor: each step against a real server or socket — all green on the test server,
and each failure branch (refused port, silent port, no TLS, wrong password, wrong database,
a transaction pooler on 127.0.0.1, migrations behind head) with its fix, the steps after it
skipped."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from neondb_support import (
    TLS_PASSWORD,
    TLSServer,
    free_port,
    make_settings,
    open_database,
    proxied_url,
    upstream_of,
    with_query,
)
from reliability_servers import PgBouncer, start_pgbouncer_process

from neondb.doctor import STEPS, Report, diagnose
from neondb.proxy import FaultProxy
from neondb.testing import admin_execute
from neondb.url import parse_url

PASSWORD = "doctor-s3cret-77a1"


def statuses(report: Report) -> dict[str, str]:
    return {s.name: s.status for s in report.steps}


def assert_failed_at(report: Report, name: str) -> None:
    """`name` failed, everything before it passed, everything after it was skipped."""
    assert [s.name for s in report.steps] == list(STEPS)
    at = STEPS.index(name)
    got = statuses(report)
    assert [got[n] for n in STEPS[:at]] == ["ok"] * at, report.steps
    assert got[name] == "fail", report.steps
    assert {got[n] for n in STEPS[at + 1 :]} == {"skipped"}
    assert not report.ok
    assert report.next.startswith(f"{name} failed: ")
    assert report.get(name).fix


async def test_all_green_on_the_test_server(neondb_database_url: str, driver: str) -> None:
    report = await diagnose(make_settings(neondb_database_url, db_driver=driver))
    assert report.ok, report.steps
    assert [s.name for s in report.steps] == list(STEPS)
    got = statuses(report)
    assert {got[n] for n in STEPS if n != "migrations"} == {"ok"}, report.steps
    assert got["migrations"] == "skipped"  # no --migrations, no alembic_version table
    assert report.get("url").data["driver"] == driver
    assert report.get("pooler").data["detected"] == "direct"
    latency = report.get("latency").data
    assert latency["rounds"] == 10
    assert latency["min_ms"] <= latency["median_ms"] <= latency["max_ms"]
    assert report.get("statement_timeout").data["single_statement"] == "30s"
    assert report.get("statement_timeout").data["transaction"] == "30s"
    assert report.next == "All checks passed."


async def test_refused_port() -> None:
    url = f"postgresql://alex:{PASSWORD}@127.0.0.1:{free_port()}/db?sslmode=disable"
    report = await diagnose(make_settings(url))
    assert_failed_at(report, "connect")
    assert "connection refused" in report.get("connect").detail
    assert "start the server" in report.get("connect").fix
    assert PASSWORD not in str(report.to_dict())


async def test_no_socket_where_the_url_says(tmp_path: Path) -> None:
    report = await diagnose(make_settings(f"postgresql://postgres@/postgres?host={tmp_path}"))
    assert_failed_at(report, "connect")
    assert "no server at the socket" in report.get("connect").detail


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A listening port whose queue is full (one connection never accepted): a new
    connection is neither accepted nor refused, as behind a firewall that drops packets."""
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        filler.connect(server.getsockname())
        yield server.getsockname()[1]


async def test_silent_port_times_out_at_connect(full_listener: int) -> None:
    url = f"postgresql://alex:{PASSWORD}@127.0.0.1:{full_listener}/db"
    report = await diagnose(make_settings(url, db_connect_timeout_s=0.5))
    assert_failed_at(report, "connect")
    assert "no answer" in report.get("connect").detail
    assert "DB_CONNECT_TIMEOUT_S=0.5" in report.get("connect").detail


@pytest.mark.parametrize(("sslmode", "step"), [("prefer", "tls"), ("disable", "auth")])
async def test_port_that_accepts_but_never_speaks(sslmode: str, step: str) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        port = server.getsockname()[1]
        url = f"postgresql://alex:{PASSWORD}@127.0.0.1:{port}/db?sslmode={sslmode}"
        report = await diagnose(make_settings(url, db_connect_timeout_s=0.5))
    assert_failed_at(report, step)
    assert "no answer to the PostgreSQL protocol" in report.get(step).detail
    assert "check the port" in report.get(step).fix


async def test_tls_required_by_a_server_without_it(
    proxy: FaultProxy, neondb_database_url: str
) -> None:
    # The embedded server has no TLS; the proxy gives it a TCP port (TLS is never tried on
    # a Unix socket).
    url = with_query(proxied_url(proxy, neondb_database_url), sslmode="require")
    report = await diagnose(make_settings(url))
    assert_failed_at(report, "tls")
    assert report.get("tls").detail == "sslmode=require, but the server does not offer TLS"
    assert "ssl = on" in report.get("tls").fix


async def test_tls_and_scram_on_the_tls_server(tls_server: TLSServer, driver: str) -> None:
    query = f"sslmode=verify-full&sslrootcert={tls_server.ca_file}&channel_binding=require"
    report = await diagnose(
        make_settings(tls_server.url(query), db_driver=driver, db_pool_max=5), workers=10
    )
    assert report.ok, report.steps
    tls = report.get("tls")
    assert tls.data["version"] in ("TLSv1.2", "TLSv1.3")
    assert "certificate and host name verified against CA file" in tls.detail
    auth = report.get("auth")
    assert auth.data["method"] == "scram-sha-256"
    assert "SCRAM-SHA-256-PLUS" in auth.data["mechanisms"]
    if driver == "psycopg":
        assert auth.detail == "SCRAM-SHA-256 with channel binding (SCRAM-SHA-256-PLUS)"
    else:
        assert "without channel binding" in auth.detail
        assert "asyncpg cannot bind" in auth.detail
    # 5 × 10 workers = 50 against max_connections 30 (3 reserved): lower to (30 - 3) // 10.
    connections = report.get("max_connections")
    assert connections.status == "warn"
    assert connections.data["app_connections"] == 50
    assert connections.data["max_connections"] == 30
    assert "lower DB_POOL_MAX to 2 or fewer" in connections.fix
    assert TLS_PASSWORD not in str(report.to_dict())


async def test_certificate_from_another_ca(tls_server: TLSServer) -> None:
    url = tls_server.url(f"sslmode=verify-full&sslrootcert={tls_server.other_ca_file}")
    report = await diagnose(make_settings(url))
    assert_failed_at(report, "tls")
    assert "certificate does not verify" in report.get("tls").detail
    assert "sslrootcert" in report.get("tls").fix


async def test_wrong_password(tls_server: TLSServer, driver: str) -> None:
    url = tls_server.url("sslmode=require", password=PASSWORD)
    report = await diagnose(make_settings(url, db_driver=driver))
    assert_failed_at(report, "login")
    assert report.get("auth").data["method"] == "scram-sha-256"
    assert "password authentication failed" in report.get("login").detail
    assert report.get("login").fix.startswith("the password for role 'neon_user' is wrong")
    assert PASSWORD not in str(report.to_dict())


async def test_wrong_database(neondb_server_url: str, driver: str) -> None:
    url = parse_url(neondb_server_url).with_database("no_such_db_3e1").url
    settings = make_settings(url.render_as_string(hide_password=False), db_driver=driver)
    report = await diagnose(settings)
    assert_failed_at(report, "login")
    assert "does not exist" in report.get("login").detail
    assert report.get("login").fix.startswith("the database 'no_such_db_3e1' does not exist")


async def test_bad_url_fails_the_first_step() -> None:
    report = await diagnose(make_settings(f"mysql://alex:{PASSWORD}@h/db"))
    assert_failed_at(report, "url")
    assert PASSWORD not in str(report.to_dict())


@pytest.fixture
def pgbouncer(neondb_server_url: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode on 127.0.0.1, before the test server (via a proxy:
    PgBouncer wants TCP, the embedded server has a Unix socket)."""
    host, port = upstream_of(neondb_server_url)
    with FaultProxy(host, port) as upstream:
        bouncer = start_pgbouncer_process(upstream.port, ["postgres"], pool_size=4)
        try:
            yield bouncer
        finally:
            bouncer.stop()


async def test_pooler_detected_from_behaviour_on_a_loopback_host(
    pgbouncer: PgBouncer, neondb_database_url: str, driver: str
) -> None:
    database = parse_url(neondb_database_url).url.database
    url = f"postgresql://postgres@127.0.0.1:{pgbouncer.port}/{database}?sslmode=disable"
    # The host name says nothing: the layer assumes direct, the behaviour says pooler.
    report = await diagnose(make_settings(url, db_driver=driver))
    pooler = report.get("pooler")
    assert pooler.status == "fail"
    assert pooler.data == {
        **pooler.data,
        "detected": "transaction pooler",
        "assumed": "direct",
        "proxied": True,
    }
    assert pooler.fix.startswith("set DB_POOLER=transaction")
    assert report.next.startswith("pooler failed: set DB_POOLER=transaction")
    assert "Then run" not in report.next  # nothing was skipped for want of it
    assert "with DB_POOLER=transaction" in report.get("statement_timeout").detail
    # Told, the layer agrees; single statements then rely on the role's default timeout.
    told = await diagnose(make_settings(url, db_driver=driver, db_pooler="transaction"))
    assert told.get("pooler").status == "ok"
    assert told.get("statement_timeout").status == "warn"
    assert told.get("statement_timeout").data["transaction"] == "30s"
    assert "neondb role-timeout" in told.get("statement_timeout").fix
    assert "client connections to the pooler" in told.get("max_connections").detail
    assert told.ok


async def test_migrations_at_head_or_behind(neondb_schema_url: str) -> None:
    from todo_api.models import MIGRATIONS

    spec = "todo_api.models:MIGRATIONS"
    behind = await diagnose(
        make_settings(neondb_schema_url, db_migrate_on_start=True), migrations=spec
    )
    assert behind.get("migrations").status == "warn"  # the app will upgrade at start-up
    assert behind.get("migrations").data == {"current": [], "heads": [MIGRATIONS.head()]}
    strict = await diagnose(
        make_settings(neondb_schema_url, db_migrate_on_start=False), migrations=spec
    )
    assert strict.get("migrations").status == "fail"
    assert "todo-api db upgrade" in strict.get("migrations").fix
    async with open_database(neondb_schema_url) as db:
        await MIGRATIONS.upgrade(db)
    at_head = await diagnose(make_settings(neondb_schema_url), migrations=spec)
    assert at_head.get("migrations").status == "ok"
    assert at_head.get("migrations").detail == f"database at head ({MIGRATIONS.head()})"
    unnamed = await diagnose(make_settings(neondb_schema_url))
    assert unnamed.get("migrations").detail.startswith(f"database at revision {MIGRATIONS.head()}")
    admin_execute(neondb_schema_url, "UPDATE alembic_version SET version_num = 'ffff'")
    ahead = await diagnose(make_settings(neondb_schema_url), migrations=spec)
    assert ahead.get("migrations").status == "fail"
    assert "which these migrations do not have" in ahead.get("migrations").detail
    wrong = await diagnose(make_settings(neondb_schema_url), migrations="todo_api.models:nope")
    assert wrong.get("migrations").status == "fail"
    assert "cannot read the migrations" in wrong.get("migrations").detail
