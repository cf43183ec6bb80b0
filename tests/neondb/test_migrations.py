"""neondb.migrations: a tiny Alembic script folder made here, upgraded, checked, and its
drift from the models detected. Each test has its own schema (neondb_schema_url)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from neondb_support import make_settings, open_database, upstream_of
from reliability_servers import start_pgbouncer_process
from sqlalchemy import Column, Integer, MetaData, Table, Text, text

from neondb import Database, MigrationDriftError, Migrations, NeonDB, parse_url
from neondb.proxy import FaultProxy
from neondb.target import direct_url
from neondb.testing import admin_execute

ENV_PY = """
from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    target_metadata=config.attributes["target_metadata"],
)
with context.begin_transaction():
    context.run_migrations()
"""

SCRIPT_MAKO = '''"""${message}"""
from alembic import op
import sqlalchemy as sa
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
def upgrade() -> None:
    ${upgrades if upgrades else "pass"}
def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
'''

VERSION_0001 = '''"""items"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("items")
'''


def models(*, extra_column: bool = False) -> MetaData:
    metadata = MetaData()
    columns = [Column("id", Integer, primary_key=True), Column("name", Text, nullable=False)]
    if extra_column:
        columns.append(Column("done", Integer))
    Table("items", metadata, *columns)
    return metadata


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    (folder / "versions").mkdir(parents=True)
    (folder / "env.py").write_text(ENV_PY)
    (folder / "script.py.mako").write_text(SCRIPT_MAKO)
    (folder / "versions" / "0001_items.py").write_text(VERSION_0001)
    return folder


@pytest.fixture
async def db(neondb_schema_url: str, driver: str) -> AsyncIterator[Database]:
    async with open_database(neondb_schema_url, db_driver=driver, db_pool_max=3) as database:
        yield database


async def test_upgrade_current_and_check(scripts: Path, db: Database) -> None:
    migrations = Migrations(scripts, models())
    assert migrations.head() == "0001"
    assert await migrations.current(db) is None
    with pytest.raises(MigrationDriftError, match="database at revision None"):
        await migrations.check(db)

    await migrations.upgrade(db)
    assert await migrations.current(db) == "0001"
    await migrations.check(db)  # at head, and the models match
    assert await migrations.drift(db) == []
    async with db.autocommit() as s:
        await s.execute(text("INSERT INTO items (name) VALUES ('x')"))

    await migrations.upgrade(db)  # already at head: nothing to do, nothing lost
    async with db.read_session() as s:
        assert (await s.execute(text("SELECT count(*) FROM items"))).scalar() == 1


async def test_drift_is_detected(scripts: Path, db: Database) -> None:
    await Migrations(scripts, models()).upgrade(db)
    drifted = Migrations(scripts, models(extra_column=True))
    diff = await drifted.drift(db)
    assert [d[0] for d in diff] == ["add_column"]
    with pytest.raises(MigrationDriftError, match="models and migrations disagree") as info:
        await drifted.check(db)
    assert "done" in str(info.value)


async def test_concurrent_upgrades_are_serialised(
    scripts: Path, db: Database, neondb_schema_url: str
) -> None:
    migrations = Migrations(scripts, models())
    await asyncio.gather(*(migrations.upgrade(db) for _ in range(3)))
    assert await migrations.current(db) == "0001"
    schema = neondb_schema_url.rsplit("search_path%3D", 1)[1].split("&", 1)[0]
    tables = admin_execute(
        neondb_schema_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "ORDER BY table_name",
        (schema,),
    )
    assert tables == [("alembic_version",), ("items",)]


async def test_neondb_lifespan_migrates_on_start(scripts: Path, neondb_schema_url: str) -> None:
    migrations = Migrations(scripts, models())
    neon = NeonDB(make_settings(neondb_schema_url, db_migrate_on_start=True), migrations=migrations)
    app = FastAPI(lifespan=neon.lifespan)
    neon.install(app)
    async with LifespanManager(app):
        assert await migrations.current(neon.db) == "0001"
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            assert (await client.get("/health/db")).status_code == 200


VERSION_0002_SLOW = '''"""a migration that outlasts a request's statement_timeout"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    timeout = op.get_bind().exec_driver_sql("SHOW statement_timeout").scalar()
    if timeout != "0":
        raise RuntimeError(f"migration ran with statement_timeout {timeout}")
    op.execute("SELECT pg_sleep(0.6)")  # past DB_STATEMENT_TIMEOUT_S (0.3 s)
    op.execute("CREATE INDEX items_name ON items (name)")


def downgrade() -> None:
    op.drop_index("items_name")
'''


async def test_upgrade_runs_without_the_statement_timeout(
    scripts: Path, neondb_schema_url: str, driver: str
) -> None:
    """A migration (an index build) may outlast a request: upgrade() lifts the app's
    statement_timeout for its own transaction only."""
    (scripts / "versions" / "0002_slow.py").write_text(VERSION_0002_SLOW)
    migrations = Migrations(scripts, models())
    async with open_database(neondb_schema_url, db_driver=driver, db_statement_timeout_s=0.3) as db:
        await migrations.upgrade(db)
        assert await migrations.current(db) == "0002"
        # The app's sessions, on the same pooled connection, keep their timeout.
        for kind in ("read_session", "session", "autocommit"):
            async with getattr(db, kind)() as s:
                assert (await s.execute(text("SHOW statement_timeout"))).scalar() == "300ms"
    indexes = admin_execute(
        neondb_schema_url,
        "SELECT count(*) FROM pg_indexes "
        "WHERE schemaname = current_schema() AND indexname = 'items_name'",
    )
    assert indexes == [(1,)]


async def test_upgrade_reports_the_revisions_and_downgrade(scripts: Path, db: Database) -> None:
    migrations = Migrations(scripts, models())
    assert await migrations.upgrade(db) == (None, "0001")
    assert await migrations.upgrade(db) == ("0001", "0001")
    assert await migrations.downgrade(db, "base") == ("0001", None)
    assert await migrations.current(db) is None


def test_direct_url_drops_pooler_from_the_host() -> None:
    host = "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech"
    pooled = parse_url(f"postgresql://alex:pw@{host}/neondb?sslmode=require")
    direct = direct_url(make_settings(None), pooled)
    assert direct is not None
    assert direct.host == "ep-cool-darkness-123456.us-east-2.aws.neon.tech"
    assert direct.url.password == "pw"
    assert direct.param("sslmode") == "require"
    assert direct_url(make_settings(None), direct) is None  # already direct
    given = make_settings(None, database_direct_url="postgresql://u@10.0.0.1/db")
    assert direct_url(given, pooled).host == "10.0.0.1"  # type: ignore[union-attr]


@pytest.fixture
def fresh_database(neondb_server_url: str) -> Iterator[str]:
    """A database of its own: PgBouncer passes no `options`, so no schema per test."""
    name = f"direct_{uuid.uuid4().hex[:10]}"
    admin_execute(neondb_server_url, f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin_execute(neondb_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_behind_a_pooler_migrations_use_the_direct_endpoint(
    scripts: Path, neondb_server_url: str, fresh_database: str, driver: str
) -> None:
    """DATABASE_URL through PgBouncer (transaction mode), DATABASE_DIRECT_URL straight to
    the server: the app's statements go through the pooler, the migration does not."""
    host, port = upstream_of(neondb_server_url)
    with FaultProxy(host, port) as to_pooler_upstream, FaultProxy(host, port) as direct:
        bouncer = start_pgbouncer_process(to_pooler_upstream.port, ["postgres"])
        try:
            async with open_database(
                f"postgresql://postgres@127.0.0.1:{bouncer.port}/{fresh_database}",
                database_direct_url=(
                    f"postgresql://postgres@127.0.0.1:{direct.port}/{fresh_database}"
                ),
                db_pooler="transaction",
                db_driver=driver,
            ) as db:
                migrations = Migrations(scripts, models())
                before = to_pooler_upstream.round_trips
                assert await migrations.upgrade(db) == (None, "0001")
                assert to_pooler_upstream.round_trips == before  # nothing via the pooler
                assert direct.connections == 1
                assert await migrations.current(db) == "0001"  # visible through the pooler
        finally:
            bouncer.stop()
