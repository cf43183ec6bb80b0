"""neondb.replicas: who reads from the primary (the window, the header, the bound on memory).
The behaviour against a real lagging standby is in tests/reliability/test_fault_replica.py."""

from __future__ import annotations

from typing import Any

from neondb import primary_reads
from neondb.replicas import (
    MAX_REMEMBERED,
    ReadContext,
    ReadRoutingMiddleware,
    RecentWriters,
    current_read_context,
)


def test_a_writer_is_pinned_for_the_window_only() -> None:
    now = [100.0]
    writers = RecentWriters(5.0, clock=lambda: now[0])
    writers.wrote(1)
    assert writers.pinned(1) is True
    assert writers.pinned(2) is False
    now[0] += 5.1
    assert writers.pinned(1) is False


def test_a_zero_window_pins_nobody() -> None:
    writers = RecentWriters(0)
    writers.wrote(1)
    assert writers.pinned(1) is False


def test_memory_is_bounded() -> None:
    writers = RecentWriters(60.0)
    for client in range(MAX_REMEMBERED + 10):
        writers.wrote(client)
    assert len(writers._until) <= MAX_REMEMBERED
    assert writers.pinned(MAX_REMEMBERED + 9) is True  # the newest are kept


def test_primary_reads_block() -> None:
    assert current_read_context() is None
    with primary_reads() as ctx:
        assert current_read_context() is ctx
        assert ctx.primary is True
    assert current_read_context() is None


async def test_the_middleware_reads_the_client_and_the_header() -> None:
    seen: list[ReadContext | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_read_context())

    middleware = ReadRoutingMiddleware(app)
    token = [(b"authorization", b"Bearer abc")]
    await middleware({"type": "http", "headers": token}, None, None)
    await middleware({"type": "http", "headers": token}, None, None)
    await middleware(
        {"type": "http", "headers": [*token, (b"x-read-consistency", b"Primary")]}, None, None
    )
    await middleware({"type": "http", "headers": []}, None, None)
    first, second, asked, anonymous = seen
    assert first is not None
    assert second is not None
    assert asked is not None
    assert first.client == second.client is not None
    assert first.primary is False
    assert asked.primary is True
    assert anonymous is not None
    assert anonymous.client is None
    assert current_read_context() is None
