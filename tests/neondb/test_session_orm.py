"""ORM code in neondb's sessions: what `add()` and `flush()` do in a transaction and in
autocommit mode, and the warning when autocommit keeps writes of a failed unit of work."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from neondb_support import Base, Item, make_settings
from sqlalchemy import func, select

from neondb import Database


@pytest.fixture
async def db(neondb_schema_url: str, driver: str) -> Database:
    database = Database(make_settings(neondb_schema_url, db_driver=driver))
    await database.start()
    async with database.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield database  # type: ignore[misc]
    await database.stop()


async def count(db: Database) -> int:
    async with db.read_session() as s:
        return int(await s.scalar(select(func.count()).select_from(Item)) or 0)


async def fail_after_a_flush(session: Any) -> None:
    """A unit of work that writes, flushes, adds more, then fails."""
    async with session as s:
        s.add(Item(name="first"))
        await s.flush()  # in autocommit mode this commits on its own
        s.add(Item(name="second"))  # never flushed
        raise RuntimeError("the route failed after its first write")


async def test_a_transaction_rolls_back_flushed_orm_writes(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="neondb"), pytest.raises(RuntimeError):
        await fail_after_a_flush(db.session())
    assert await count(db) == 0
    assert "ORM flush" not in caplog.text


async def test_autocommit_keeps_flushed_writes_and_says_so(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="neondb"), pytest.raises(RuntimeError):
        await fail_after_a_flush(db.autocommit())
    assert await count(db) == 1
    warnings = [r.getMessage() for r in caplog.records if "ORM flush" in r.getMessage()]
    assert len(warnings) == 1
    assert "after 1 ORM flush(es)" in warnings[0]
    assert "DbSession" in warnings[0]


async def test_autocommit_saves_added_objects_at_the_end(db: Database) -> None:
    async with db.autocommit() as s:
        s.add(Item(name="saved at exit"))
    assert await count(db) == 1
