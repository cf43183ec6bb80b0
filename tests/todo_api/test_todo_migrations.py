"""The Alembic migration creates exactly the models' schema, and the list queries the API
runs are served by indexes (checked with EXPLAIN on enough rows, after ANALYZE)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, text

from neondb import Database, MigrationDriftError
from todo_api.conversations import conversations_statement, messages_statement
from todo_api.models import MIGRATIONS
from todo_api.settings import AppSettings
from todo_api.tasks import TaskFilters, list_statement


@pytest.fixture
async def db(neondb_schema_url: str) -> AsyncIterator[Database]:
    settings = AppSettings(  # type: ignore[call-arg]
        _env_file=None, database_url=neondb_schema_url, db_pool_min=1, db_pool_max=2
    )
    database = Database(settings)
    await database.start()
    try:
        yield database
    finally:
        await database.stop()


async def rows(db: Database, sql: str, **params: Any) -> list[Any]:
    async with db.read_session() as s:
        return list((await s.execute(text(sql), params)).all())


async def test_upgrade_empty_schema_then_no_drift(db: Database) -> None:
    assert await MIGRATIONS.current(db) is None
    await MIGRATIONS.upgrade(db)
    assert await MIGRATIONS.current(db) == MIGRATIONS.head() == "0002"
    await MIGRATIONS.check(db)
    assert await MIGRATIONS.drift(db) == []
    await MIGRATIONS.upgrade(db)  # idempotent at head
    tables = await rows(
        db, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    assert sorted(t[0] for t in tables) == ["alembic_version", "conversations", "messages", "tasks"]


async def test_column_types(db: Database) -> None:
    await MIGRATIONS.upgrade(db)
    cols = {
        (r.table_name, r.column_name): (r.data_type, r.udt_name, r.is_nullable)
        for r in await rows(
            db,
            "SELECT table_name, column_name, data_type, udt_name, is_nullable "
            "FROM information_schema.columns WHERE table_schema = current_schema()",
        )
    }
    assert cols[("tasks", "tags")][:2] == ("ARRAY", "_text")  # a real array, not JSON text
    for table, column in [
        ("tasks", "created_at"),
        ("tasks", "updated_at"),
        ("tasks", "due_date"),
        ("conversations", "created_at"),
        ("conversations", "updated_at"),
        ("messages", "created_at"),
    ]:
        assert cols[(table, column)][0] == "timestamp with time zone", (table, column)
    for table in ["tasks", "conversations", "messages"]:
        assert cols[(table, "id")][:2] == ("bigint", "int8")
    assert cols[("tasks", "priority")][0] == "character varying"
    # No ENUM types: CHECK constraints instead.
    enums = await rows(
        db,
        "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = current_schema() AND t.typtype = 'e'",
    )
    assert enums == []


async def test_constraints_and_indexes(db: Database) -> None:
    await MIGRATIONS.upgrade(db)
    fk = await rows(
        db,
        "SELECT confdeltype::text FROM pg_constraint "
        "WHERE conrelid = 'messages'::regclass AND contype = 'f'",
    )
    assert [r[0] for r in fk] == ["c"]  # ON DELETE CASCADE
    checks = await rows(
        db,
        "SELECT conname FROM pg_constraint WHERE contype = 'c' "
        "AND connamespace = current_schema()::regnamespace ORDER BY conname",
    )
    assert [r[0] for r in checks] == [
        "ck_messages_content",
        "ck_messages_role",
        "ck_tasks_priority",
        "ck_tasks_recurring",
        "ck_tasks_recurring_pattern",
        "ck_tasks_title",
    ]
    gin = await rows(
        db,
        "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
        "WHERE c.relname = 'ix_tasks_tags' AND c.relnamespace = current_schema()::regnamespace",
    )
    assert [r[0] for r in gin] == ["gin"]
    async with db.autocommit() as s:
        for bad in [
            "INSERT INTO tasks (user_id, title, priority) VALUES ('u', 't', 'urgent')",
            "INSERT INTO tasks (user_id, title, recurring) VALUES ('u', 't', true)",
            "INSERT INTO tasks (user_id, title) VALUES ('u', '')",
            "INSERT INTO messages (conversation_id, role, content) VALUES (1, 'user', 'x')",
        ]:
            with pytest.raises(Exception, match="violates"):
                await s.execute(text(bad))


async def test_drift_is_detected(db: Database) -> None:
    await MIGRATIONS.upgrade(db)
    async with db.autocommit() as s:
        await s.execute(text("DROP INDEX ix_tasks_tags"))
        await s.execute(text("ALTER TABLE conversations ALTER COLUMN title TYPE varchar(50)"))
    with pytest.raises(MigrationDriftError, match="ix_tasks_tags"):
        await MIGRATIONS.check(db)
    diff = str(await MIGRATIONS.drift(db))
    assert "modify_type" in diff
    assert "title" in diff


async def test_trigram_and_source_indexes(db: Database) -> None:
    await MIGRATIONS.upgrade(db)
    found = await rows(
        db,
        "SELECT c.relname, am.amname, i.indisunique, "
        "coalesce((SELECT string_agg(o.opcname, ',') FROM unnest(i.indclass) AS k(oid) "
        "JOIN pg_opclass o ON o.oid = k.oid), '') AS opclasses "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_am am ON am.oid = c.relam "
        "WHERE i.indrelid = 'tasks'::regclass AND c.relname = ANY(:names) ORDER BY c.relname",
        names=["ix_tasks_description_trgm", "ix_tasks_title_trgm", "uq_tasks_source_task_id"],
    )
    assert [tuple(r) for r in found] == [
        ("ix_tasks_description_trgm", "gin", False, "gin_trgm_ops"),
        ("ix_tasks_title_trgm", "gin", False, "gin_trgm_ops"),
        ("uq_tasks_source_task_id", "btree", True, "int8_ops"),
    ]
    # The extension lives outside the app's schema, which may be dropped without it.
    home = await rows(
        db,
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'",
    )
    assert [r[0] for r in home] == ["public"]
    async with db.autocommit() as s:
        await s.execute(text("DROP INDEX ix_tasks_title_trgm"))
    with pytest.raises(MigrationDriftError, match="ix_tasks_title_trgm"):
        await MIGRATIONS.check(db)


async def test_downgrade_to_0001_and_back(db: Database) -> None:
    await MIGRATIONS.upgrade(db)
    assert await MIGRATIONS.downgrade(db, "0001") == ("0002", "0001")
    cols = await rows(
        db,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'tasks' "
        "AND column_name = 'source_task_id'",
    )
    assert cols == []
    # Again to head: pg_trgm is already there (left by the downgrade, database-wide).
    assert await MIGRATIONS.upgrade(db) == ("0001", "0002")
    await MIGRATIONS.check(db)


async def test_check_reports_missing_upgrade(db: Database) -> None:
    with pytest.raises(MigrationDriftError, match="revision None"):
        await MIGRATIONS.check(db)


async def test_downgrade_removes_everything(db: Database) -> None:
    await MIGRATIONS.upgrade(db)

    def down(conn: Connection) -> None:
        command.downgrade(MIGRATIONS.config(conn), "base")

    async with db.engine.begin() as conn:
        await conn.run_sync(down)
    tables = await rows(
        db, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    assert [t[0] for t in tables] == ["alembic_version"]


# EXPLAIN ---------------------------------------------------------------------------------------

USERS = 300
TASKS = 9000
CONVERSATIONS = 3000
MESSAGES = 9000


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


async def explain(db: Database, stmt: Any) -> list[dict[str, Any]]:
    """The plan of a SQLAlchemy statement exactly as the app's driver sends it."""
    async with db.engine.connect() as conn:
        compiled = stmt.compile(dialect=conn.dialect)
        params: Any = compiled.construct_params()
        if compiled.positiontup is not None:  # asyncpg: $1, $2...
            params = tuple(params[name] for name in compiled.positiontup)
        result = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", params)
        plan = result.scalar_one()
    return list(plan_nodes(plan[0]["Plan"]))


def scans(nodes: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {
        (n["Node Type"], n.get("Index Name") or n.get("Relation Name", ""))
        for n in nodes
        if "Scan" in n["Node Type"]
    }


@pytest.fixture
async def filled(db: Database) -> Database:
    await MIGRATIONS.upgrade(db)
    async with db.autocommit() as s:
        await s.execute(
            text(
                "INSERT INTO tasks (user_id, title, description, completed, priority, tags, "
                "due_date, created_at) "
                "SELECT 'u' || (g % :users), 'task ' || g, "
                "CASE WHEN g % 3 = 0 THEN 'about ' || g END, g % 4 = 0, "
                "(ARRAY['low', 'medium', 'high'])[1 + g % 3], ARRAY['t' || (g % 10), 'all'], "
                "now() + make_interval(hours => g), now() - make_interval(mins => g) "
                "FROM generate_series(1, :n) AS g"
            ),
            {"users": USERS, "n": TASKS},
        )
        await s.execute(
            text(
                "INSERT INTO conversations (user_id, title, updated_at) "
                "SELECT 'u' || (g % :users), 'c' || g, now() - make_interval(mins => g) "
                "FROM generate_series(1, :n) AS g"
            ),
            {"users": USERS, "n": CONVERSATIONS},
        )
        await s.execute(
            text(
                "INSERT INTO messages (conversation_id, role, content, created_at) "
                "SELECT 1 + g % :convs, 'user', 'm' || g, now() + make_interval(secs => g) "
                "FROM generate_series(1, :n) AS g"
            ),
            {"convs": CONVERSATIONS, "n": MESSAGES},
        )
        await s.execute(text("ANALYZE tasks, conversations, messages"))
    return db


@pytest.mark.parametrize(
    "filters",
    [
        TaskFilters(),
        TaskFilters(status="pending"),
        TaskFilters(status="completed"),
        TaskFilters(tag="t3"),
        TaskFilters(q="about 1"),
        TaskFilters(status="pending", priority="high", tag="all"),
        TaskFilters(due_after=datetime(2000, 1, 1, tzinfo=UTC)),
    ],
)
async def test_task_lists_use_an_index(filled: Database, filters: TaskFilters) -> None:
    nodes = await explain(filled, list_statement("u7", filters, 20, 0))
    found = scans(nodes)
    assert not any(kind == "Seq Scan" for kind, _ in found), found
    assert any(name.startswith("ix_tasks_") for _, name in found), found


async def test_conversation_list_uses_an_index(filled: Database) -> None:
    found = scans(await explain(filled, conversations_statement("u7", 20, 0)))
    assert not any(kind == "Seq Scan" for kind, _ in found), found
    assert any(name == "ix_conversations_user_updated" for _, name in found), found


async def test_message_list_uses_an_index(filled: Database) -> None:
    found = scans(await explain(filled, messages_statement(42, "u42", 20, 0)))
    assert not any(kind == "Seq Scan" for kind, _ in found), found
    assert any(name == "ix_messages_conversation_created" for _, name in found), found
    assert any(name == "pk_conversations" for _, name in found), found


async def test_control_without_the_indexes_the_table_is_scanned(filled: Database) -> None:
    # The same check on the same data fails without the indexes: it has teeth.
    async with filled.autocommit() as s:
        await s.execute(text("DROP INDEX ix_tasks_user_created, ix_tasks_user_completed_created"))
        await s.execute(text("DROP INDEX ix_messages_conversation_created"))
    found = scans(await explain(filled, list_statement("u7", TaskFilters(), 20, 0)))
    assert ("Seq Scan", "tasks") in found
    found = scans(await explain(filled, messages_statement(42, "u42", 20, 0)))
    assert ("Seq Scan", "messages") in found
