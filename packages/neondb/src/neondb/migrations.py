"""Alembic, driven from code: upgrade to head, current revision, and drift check.

An app points `Migrations` at its Alembic script folder (holding `env.py` and
`versions/`) and its SQLAlchemy metadata. Its `env.py` runs against the connection handed in
`config.attributes["connection"]` (see todo_api/migrations/env.py), so migrations use the
same engine, driver and URL translation as the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from neondb.database import Database
from neondb.extras import missing_extra

try:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
except ImportError as e:
    raise missing_extra("migrations", "neondb.migrations (Alembic)") from e

__all__ = ["MigrationDriftError", "Migrations"]

# Serialises concurrent start-ups (several workers) on one database: arbitrary constant.
_LOCK_KEY = 7_210_455_301


class MigrationDriftError(RuntimeError):
    """The models and the migrations disagree."""


@dataclass(frozen=True)
class Migrations:
    script_location: Path
    metadata: MetaData

    def config(self, connection: Connection | None = None) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(self.script_location))
        cfg.attributes["connection"] = connection
        cfg.attributes["target_metadata"] = self.metadata
        return cfg

    def head(self) -> str | None:
        return ScriptDirectory.from_config(self.config()).get_current_head()

    async def upgrade(self, db: Database, revision: str = "head") -> tuple[str | None, str | None]:
        """Upgrade to `revision`; return the revisions before and after. Several processes
        starting at once migrate once: the first holds an advisory lock, the others wait
        for it and then find the database at `revision`."""
        return await self._change(db, command.upgrade, revision)

    async def downgrade(self, db: Database, revision: str) -> tuple[str | None, str | None]:
        """Downgrade to `revision` (`-1`, a revision id, or `base`)."""
        return await self._change(db, command.downgrade, revision)

    async def _change(
        self, db: Database, step: Any, revision: str
    ) -> tuple[str | None, str | None]:
        def run(conn: Connection) -> tuple[str | None, str | None]:
            # A transaction-scoped lock, so it also works behind a transaction pooler.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
            # A migration may legitimately run longer than a request (an index build): the
            # app's statement_timeout is for requests.
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
            before = MigrationContext.configure(conn).get_current_revision()
            step(self.config(conn), revision)
            return before, MigrationContext.configure(conn).get_current_revision()

        async with db.schema_engine() as engine, engine.begin() as conn:
            return await conn.run_sync(run)

    async def current(self, db: Database) -> str | None:
        def run(conn: Connection) -> str | None:
            return MigrationContext.configure(conn).get_current_revision()

        async with db.engine.connect() as conn:
            return await conn.run_sync(run)

    async def drift(self, db: Database) -> list[Any]:
        """Differences between the database (at head) and the models; empty when none."""

        def run(conn: Connection) -> list[Any]:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, self.metadata))

        async with db.engine.connect() as conn:
            return await conn.run_sync(run)

    async def check(self, db: Database) -> None:
        """Raise MigrationDriftError unless the database is at head and matches the models."""
        current, head = await self.current(db), self.head()
        if current != head:
            raise MigrationDriftError(f"database at revision {current}, migrations head is {head}")
        diff = await self.drift(db)
        if diff:
            raise MigrationDriftError(f"models and migrations disagree: {diff}")
