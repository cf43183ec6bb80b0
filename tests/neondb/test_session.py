"""neondb.session through `Database`: commit, rollback, autocommit, reads, safe retries and
mapped errors, with both drivers against the shared test server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy.exc as sa_exc
from neondb_support import active_statements, open_database, proxied_url, wait_until
from sqlalchemy import Integer, Text, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from neondb import Database, DatabaseUnavailableError, NeonSession, WriteOutcomeUnknownError
from neondb.proxy import FaultProxy
from neondb.session import is_read_statement
from neondb.testing import admin_execute


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(Text, unique=True)


@pytest.fixture
async def db(neondb_schema_url: str, driver: str) -> AsyncIterator[Database]:
    async with open_database(neondb_schema_url, db_driver=driver, db_pool_max=3) as database:
        async with database.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield database


async def bodies(db: Database) -> list[str]:
    async with db.read_session() as s:
        return list((await s.scalars(select(Note.body).order_by(Note.body))).all())


INSERT = text("INSERT INTO notes (body) VALUES (:b)")


async def test_session_commits_on_success(db: Database) -> None:
    async with db.session() as s:
        assert isinstance(s, NeonSession)
        await s.execute(INSERT, {"b": "a"})
        s.add(Note(body="b"))
    async with db.transaction() as s:  # the alias
        await s.execute(INSERT, {"b": "c"})
    assert await bodies(db) == ["a", "b", "c"]
    assert db.pool_stats()["primary"]["checked_out"] == 0


async def run(db: Database, kind: str, *steps: str, fail: bool = False) -> None:
    """In one session of `kind`: insert each of `steps` (the body "<commit>" commits
    instead), then raise RuntimeError if `fail`."""
    async with getattr(db, kind)() as s:
        for body in steps:
            if body == "<commit>":
                await s.commit()
            elif body.startswith("orm:"):
                s.add(Note(body=body))
                await s.flush()
            else:
                await s.execute(INSERT, {"b": body})
        if fail:
            raise RuntimeError("boom")


async def test_session_rolls_back_on_exception(db: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        await run(db, "session", "a", "orm:b", fail=True)
    assert await bodies(db) == []
    assert db.pool_stats()["primary"]["checked_out"] == 0


async def test_sql_error_rolls_back_and_stays_the_callers_own(db: Database) -> None:
    with pytest.raises(sa_exc.IntegrityError):  # not mapped: a constraint is not an outage
        await run(db, "transaction", "a", "a")
    assert await bodies(db) == []


async def test_uncommitted_writes_are_invisible_to_other_sessions(db: Database) -> None:
    async with db.session() as writer:
        await writer.execute(INSERT, {"b": "a"})
        assert (await writer.scalar(text("SELECT count(*) FROM notes"))) == 1
        assert await bodies(db) == []
    assert await bodies(db) == ["a"]


async def test_explicit_commit_inside_a_session_keeps_that_part(db: Database) -> None:
    with pytest.raises(RuntimeError):
        await run(db, "session", "kept", "<commit>", "lost", fail=True)
    assert await bodies(db) == ["kept"]


async def test_autocommit_commits_each_statement(db: Database) -> None:
    with pytest.raises(RuntimeError):
        await run(db, "autocommit", "a", fail=True)  # nothing to roll back
    assert await bodies(db) == ["a"]
    with pytest.raises(sa_exc.IntegrityError):
        await run(db, "autocommit", "b", "a")  # the duplicate fails, alone
    assert await bodies(db) == ["a", "b"]


async def test_autocommit_returning(db: Database) -> None:
    async with db.autocommit() as s:
        new_id = (
            await s.execute(text("INSERT INTO notes (body) VALUES ('x') RETURNING id"))
        ).scalar_one()
    async with db.read_session() as s:
        assert (await s.get(Note, new_id)) is not None


async def test_autocommit_writes_added_orm_objects(db: Database) -> None:
    async with db.autocommit() as s:
        s.add(Note(body="orm"))
    assert await bodies(db) == ["orm"]


async def test_read_session_reads(db: Database) -> None:
    async with db.autocommit() as s:
        await s.execute(text("INSERT INTO notes (body) VALUES ('a'), ('b')"))
    async with db.read_session() as s:
        assert (await s.scalar(text("SELECT count(*) FROM notes"))) == 2
        rows = (await s.scalars(select(Note).order_by(Note.id))).all()
        assert [n.body for n in rows] == ["a", "b"]
        assert (await s.execute(text("SHOW search_path"))).scalar_one().startswith("t_")


def test_is_read_statement() -> None:
    assert is_read_statement(select(Note))
    assert not is_read_statement(select(Note).with_for_update())
    assert is_read_statement(text("  select 1"))
    assert is_read_statement(text("SHOW search_path"))
    assert not is_read_statement(text("INSERT INTO notes VALUES (1, 'x')"))
    assert not is_read_statement(text("WITH x AS (DELETE FROM notes RETURNING 1) SELECT 1"))
    assert not is_read_statement(text(""))


async def test_session_before_start_is_a_clear_error() -> None:
    db = Database()
    with pytest.raises(RuntimeError, match="not started"):
        async with db.session():
            pass


# lost connections: reads are retried, writes never ----------------------------------------


@pytest.fixture
async def proxied(
    neondb_schema_url: str, proxy: FaultProxy, driver: str
) -> AsyncIterator[tuple[Database, FaultProxy]]:
    url = proxied_url(proxy, neondb_schema_url)
    async with open_database(url, db_driver=driver, db_pool_max=2) as database:
        async with database.autocommit() as s:
            await s.execute(text("CREATE TABLE marks (n int)"))
        yield database, proxy


async def cut_while_running(
    proxy: FaultProxy, admin_url: str, needle: str, work: asyncio.Task[object]
) -> None:
    """Cut every proxied connection once the statement holding `needle` is running."""
    await wait_until(lambda: active_statements(admin_url, needle) == 1 or work.done())
    assert not work.done()
    proxy.drop_all()


async def test_read_cut_mid_flight_is_retried(
    proxied: tuple[Database, FaultProxy], neondb_schema_url: str
) -> None:
    db, proxy = proxied

    async def read() -> object:
        async with db.read_session() as s:
            return (await s.execute(text("SELECT 42 FROM pg_sleep(0.3) AS read_probe"))).scalar()

    before = proxy.connections
    work = asyncio.create_task(read())
    await cut_while_running(proxy, neondb_schema_url, "read_probe", work)
    assert await work == 42
    assert proxy.connections > before  # answered on a new connection


async def test_autocommit_write_cut_mid_flight_is_not_replayed(
    proxied: tuple[Database, FaultProxy], neondb_schema_url: str
) -> None:
    db, proxy = proxied

    async def write() -> None:
        async with db.autocommit() as s:
            await s.execute(text("INSERT INTO marks SELECT 1 FROM pg_sleep(0.3) AS write_probe"))

    work = asyncio.create_task(write())
    await cut_while_running(proxy, neondb_schema_url, "write_probe", work)
    with pytest.raises(WriteOutcomeUnknownError) as info:
        await work
    assert info.value.status_code == 503
    await wait_until(lambda: active_statements(neondb_schema_url, "write_probe") == 0)
    rows = admin_execute(neondb_schema_url, "SELECT count(*) FROM marks")
    assert rows[0][0] <= 1  # it may have committed; it was never sent twice


async def test_transaction_cut_before_commit_is_unavailable_and_rolled_back(
    proxied: tuple[Database, FaultProxy], neondb_schema_url: str
) -> None:
    db, proxy = proxied

    async def write() -> None:
        async with db.session() as s:
            await s.execute(text("INSERT INTO marks SELECT 1 FROM pg_sleep(0.3) AS tx_probe"))

    work = asyncio.create_task(write())
    await cut_while_running(proxy, neondb_schema_url, "tx_probe", work)
    with pytest.raises(DatabaseUnavailableError) as info:
        await work
    # COMMIT was never sent: the outcome is known (nothing happened).
    assert not isinstance(info.value, WriteOutcomeUnknownError)
    await wait_until(lambda: active_statements(neondb_schema_url, "tx_probe") == 0)
    assert admin_execute(neondb_schema_url, "SELECT count(*) FROM marks") == [(0,)]
    # And the database is usable again at once.
    async with db.autocommit() as s:
        await s.execute(text("INSERT INTO marks VALUES (2)"))
    assert admin_execute(neondb_schema_url, "SELECT count(*) FROM marks") == [(1,)]
