"""Alembic environment of todo_api, driven by `neondb.Migrations`.

It runs on the connection handed in `config.attributes["connection"]` (opened by neondb
with the app's driver and URL translation, inside a transaction holding the migration
lock), against the metadata in `config.attributes["target_metadata"]`. Objects are created
in the connection's current schema (the first entry of its `search_path`).
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
target_metadata = config.attributes.get("target_metadata")

if connection is None:
    raise RuntimeError(
        "todo_api migrations run through neondb: `todo-api migrate`, or "
        "`await todo_api.models.MIGRATIONS.upgrade(db)`"
    )

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    compare_type=True,
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
