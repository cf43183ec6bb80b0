"""Waiters for a pooled connection are served first come, first served, under overload,
and the pool timeout still ends a wait with a 503."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from neondb_support import open_database, wait_until
from sqlalchemy import text

from neondb import Database, PoolExhaustedError
from neondb.fair_pool import FairAsyncQueuePool, FifoGate

CLIENTS = 20
ROUNDS = 3


async def queued(db: Database, count: int) -> None:
    """Until `count` callers wait for a connection (counted, not timed)."""
    pool = db.engine.pool
    assert isinstance(pool, FairAsyncQueuePool)
    await wait_until(lambda: pool.gate.waiting >= count, every_s=0.001)


async def test_waiters_are_served_in_arrival_order(neondb_database_url: str, driver: str) -> None:
    """A pool of 2 held, 20 clients queue one after the other; each, once served, asks
    again at once (as a load generator's client does), 3 times. Connections are handed out
    in exactly the order they were asked for: a newcomer never overtakes a waiter."""
    arrived: list[int] = []
    served: list[int] = []

    async def client(i: int) -> None:
        for _ in range(ROUNDS):
            async with db.read_session() as s:
                # Nothing between these two lines lets another task run before this one
                # has joined the queue (or taken a free connection).
                arrived.append(i)
                await s.connection()
                served.append(i)
                assert (await s.execute(text("SELECT 1"))).scalar() == 1

    async with open_database(
        neondb_database_url, db_driver=driver, db_pool_min=2, db_pool_max=2
    ) as db:
        async with db.read_session() as a, db.read_session() as b:
            await a.execute(text("SELECT 1"))
            await b.execute(text("SELECT 1"))
            clients = []
            for i in range(CLIENTS):
                clients.append(asyncio.create_task(client(i)))
                await queued(db, i + 1)
        await asyncio.gather(*clients)
    assert Counter(served) == {i: ROUNDS for i in range(CLIENTS)}
    assert served[:CLIENTS] == list(range(CLIENTS))  # the 20 queued first, in their order
    assert served == arrived  # and every later request in its turn


async def test_a_waiter_that_times_out_leaves_the_queue(neondb_database_url: str) -> None:
    """The wait is bounded by DB_POOL_TIMEOUT_S (PoolExhaustedError, a 503); the waiter
    behind the one that gave up is served next, and no slot is lost."""
    async with open_database(neondb_database_url, db_pool_max=1, db_pool_timeout_s=0.3) as db:
        async with db.read_session() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(PoolExhaustedError):
                async with db.read_session() as s:
                    await s.execute(text("SELECT 1"))
        pool = db.engine.pool
        assert isinstance(pool, FairAsyncQueuePool)
        assert pool.gate.waiting == 0
        for _ in range(3):  # the one slot is free again, each time
            async with db.read_session() as s:
                assert (await s.execute(text("SELECT 1"))).scalar() == 1


async def test_gate_hands_a_released_slot_to_the_longest_waiter() -> None:
    gate = FifoGate(1)
    assert await gate.acquire(None)
    order: list[str] = []

    async def take(name: str) -> None:
        assert await gate.acquire(None)
        order.append(name)
        gate.release()

    first = asyncio.create_task(take("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(take("second"))
    await asyncio.sleep(0)
    assert gate.waiting == 2
    gate.release()
    # A newcomer arriving after the release queues behind both.
    third = asyncio.create_task(take("third"))
    await asyncio.gather(first, second, third)
    assert order == ["first", "second", "third"]
    assert await gate.acquire(0)  # the slot is back
    assert not await gate.acquire(0)  # and only one


async def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    gate = FifoGate(1)
    assert await gate.acquire(None)
    cancelled = asyncio.create_task(gate.acquire(None))
    await asyncio.sleep(0)
    after = asyncio.create_task(gate.acquire(None))
    await asyncio.sleep(0)
    gate.release()  # granted to `cancelled`, which is cancelled before it runs
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await after
    assert gate.waiting == 0
