"""neondb.migrations: a tiny Alembic script folder made here, upgraded, checked, and its
drift from the models detected. Each test has its own schema (neondb_schema_url)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from neondb_support import make_settings, open_database
from sqlalchemy import Column, Integer, MetaData, Table, Text, text

from neondb import Database, MigrationDriftError, Migrations, NeonDB
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
