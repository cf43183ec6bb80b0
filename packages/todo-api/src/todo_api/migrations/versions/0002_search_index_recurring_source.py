"""trigram indexes for q, one next occurrence per completed occurrence

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

* `pg_trgm` GIN indexes on `tasks.title` and `tasks.description`, so `q` (a literal
  ILIKE substring) is an index search instead of a scan of the caller's rows.
* `tasks.source_task_id` + a unique index: completing an occurrence inserts its next one
  with `ON CONFLICT DO NOTHING`, so reopening and completing it again adds no duplicate.

`pg_trgm` is database-wide. When it is missing it is created in `public` (where extensions
usually live, and where it outlives any app schema), or in the current schema when this
role cannot create objects in `public`; the operator class is named with the schema the
extension is in, so the indexes build whatever the `search_path`. The downgrade leaves the
extension: other schemas of the database may use it.

The index builds take a lock that blocks writes to `tasks` while they run (a plain
CREATE INDEX: migrations run in a transaction, which CONCURRENTLY cannot).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCHED = ("title", "description")

_EXTENSION_SCHEMA = (
    "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
    "WHERE e.extname = 'pg_trgm'"
)
# CASE, not AND: has_schema_privilege raises on a missing schema, and AND may run it first.
_HOME = (
    "SELECT CASE WHEN to_regnamespace('public') IS NULL THEN current_schema() "
    "WHEN has_schema_privilege('public', 'CREATE') THEN 'public' ELSE current_schema() END"
)


def _trigram_schema(bind: sa.Connection) -> str:
    """The schema holding pg_trgm, creating the extension there when it is missing."""
    schema = bind.exec_driver_sql(_EXTENSION_SCHEMA).scalar()
    if schema is None:
        home = str(bind.exec_driver_sql(_HOME).scalar_one())
        quoted = bind.dialect.identifier_preparer.quote_schema(home)
        op.execute(f"CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA {quoted}")
        schema = bind.exec_driver_sql(_EXTENSION_SCHEMA).scalar_one()
    return str(schema)


def upgrade() -> None:
    bind = op.get_bind()
    opclass = bind.dialect.identifier_preparer.quote_schema(_trigram_schema(bind))
    for column in SEARCHED:
        op.create_index(
            f"ix_tasks_{column}_trgm",
            "tasks",
            [column],
            postgresql_using="gin",
            postgresql_ops={column: f"{opclass}.gin_trgm_ops"},
        )
    op.add_column("tasks", sa.Column("source_task_id", sa.BigInteger(), nullable=True))
    op.create_index("uq_tasks_source_task_id", "tasks", ["source_task_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_tasks_source_task_id", table_name="tasks")
    op.drop_column("tasks", "source_task_id")
    for column in SEARCHED:
        op.drop_index(f"ix_tasks_{column}_trgm", table_name="tasks")
