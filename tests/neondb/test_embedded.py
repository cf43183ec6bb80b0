"""neondb.embedded: start, reuse (same folder: same server, also from another process), and
stop when the last holder lets go. One data folder for the module: initdb runs once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from neondb_support import make_settings, wait_until
from sqlalchemy import text

from neondb import Database, EmbeddedServer
from neondb.testing import admin_execute


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded")


def running(server: EmbeddedServer) -> bool:
    return (server.pgdata / "postmaster.pid").exists()


def answers(url: str) -> bool:
    try:
        return admin_execute(url, "SELECT 1") == [(1,)]
    except psycopg.OperationalError:
        return False


def postmaster_pid(url: str) -> int:
    return int(
        admin_execute(url, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")[
            0
        ][0]
    )


async def test_start_reuse_and_stop(data_dir: Path) -> None:
    first = EmbeddedServer(data_dir)
    assert "stopped" in repr(first)
    url = first.start()
    assert url.startswith("postgresql://postgres@/postgres?host=")
    assert "running" in repr(first)
    assert answers(url)
    server_pid = postmaster_pid(url)

    # The same folder in this process: the same server.
    second = EmbeddedServer(data_dir)
    assert second.start() == url
    assert first.start() == url  # idempotent
    assert postmaster_pid(url) == server_pid

    # Another process joins it, queries it, and leaves it running when it exits.
    script = (
        "import sys\n"
        "from neondb import EmbeddedServer\n"
        "from neondb.testing import admin_execute\n"
        "url = EmbeddedServer(sys.argv[1]).start()\n"
        "print(url)\n"
        "print(admin_execute(url, 'SELECT 40 + 2')[0][0])\n"
    )
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [url, "42"]
    assert answers(url)
    assert postmaster_pid(url) == server_pid

    # The first holder lets go: the second still has it.
    first.stop()
    assert "stopped" in repr(first)
    assert answers(url)
    # The last holder lets go: the server stops.
    second.stop()
    await wait_until(lambda: not running(second), timeout_s=30)
    assert not answers(url)
    with pytest.raises(RuntimeError, match="not started"):
        second.url()


async def test_database_without_url_uses_the_embedded_server(data_dir: Path) -> None:
    db = Database(make_settings(None, db_data_dir=data_dir))
    await db.start()
    try:
        assert db.embedded is not None
        assert db.url is not None
        assert db.url.is_unix_socket
        async with db.read_session() as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1
        assert running(db.embedded)
        server = db.embedded
    finally:
        await db.stop()
    assert db.embedded is None
    await wait_until(lambda: not running(server), timeout_s=30)


async def test_failed_start_releases_the_embedded_server(
    data_dir: Path, neondb_database_url: str
) -> None:
    """The embedded server starts, then the replica URL is refused: start() stops again
    and lets the embedded server go (never half-started)."""
    from neondb import DatabaseUnavailableError
    from neondb.url import parse_url

    replica = parse_url(neondb_database_url).with_database("no_such_replica_db")
    db = Database(
        make_settings(
            None,
            db_data_dir=data_dir,
            database_read_url=replica.url.render_as_string(hide_password=False),
        )
    )
    with pytest.raises(DatabaseUnavailableError, match="no_such_replica_db"):
        await db.start()
    assert db.url is not None  # it got as far as the embedded server
    assert db.embedded is None
    assert db._engine is None
    await wait_until(lambda: not running(EmbeddedServer(data_dir)), timeout_s=30)


async def test_sync_engine_before_start_then_stop_releases_the_embedded_server(
    data_dir: Path,
) -> None:
    from neondb import embedded

    db = Database(make_settings(None, db_data_dir=data_dir))
    pgdata = EmbeddedServer(data_dir).pgdata
    try:
        with db.sync_engine().connect() as conn:  # before start(): "made on first use"
            assert conn.execute(text("SELECT 1")).scalar() == 1
        await db.start()
        await db.stop()
        assert db.embedded is None
        assert embedded._holders.get(pgdata, 0) == 0  # this process holds it no more
    finally:
        # Leave the module's server stopped and unheld for the next test, whatever happened.
        if embedded._holders.pop(pgdata, 0):
            last = EmbeddedServer(data_dir)
            last.start()
            last.stop()
        await wait_until(lambda: not running(EmbeddedServer(data_dir)), timeout_s=30)


async def test_kept_server_and_shutdown(data_dir: Path) -> None:
    kept = EmbeddedServer(data_dir, stop_on_exit=False)  # as `neondb embedded start`
    url = kept.start()
    kept.stop()
    assert answers(url)  # still running: it was started to outlive its starter
    assert EmbeddedServer(data_dir).shutdown() is True
    await wait_until(lambda: not running(kept), timeout_s=30)
    assert not answers(url)
    assert EmbeddedServer(data_dir).shutdown() is False
