"""neondb.resilience: the circuit breaker (unit, with an injected clock), the retry policy,
and the breaker inside `Database` against a refusing or stalling server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from neondb_support import cut, open_database, proxied_url, wait_until
from sqlalchemy import text

from neondb import CircuitBreaker, CircuitOpenError, Database, DatabaseUnavailableError
from neondb.health import database_health
from neondb.proxy import FaultProxy
from neondb.resilience import retrying


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, failures: int = 3, reset_s: float = 10.0) -> CircuitBreaker:
    changes: list[str] = []
    b = CircuitBreaker(failures, reset_s, clock=clock, on_change=changes.append)
    b.changes = changes  # type: ignore[attr-defined]
    return b


def test_opens_after_n_consecutive_failures(clock: Clock) -> None:
    b = breaker(clock)
    assert b.state == "closed"
    assert b.before_call() is False
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"
    assert b.consecutive_failures == 2
    b.record_success()  # not in a row any more
    assert b.consecutive_failures == 0
    for _ in range(3):
        b.record_failure()
    assert b.state == "open"
    assert b.changes == ["open"]  # type: ignore[attr-defined]


def test_fails_fast_with_the_cool_down_left(clock: Clock) -> None:
    b = breaker(clock, failures=1, reset_s=10)
    b.record_failure()
    with pytest.raises(CircuitOpenError) as info:
        b.before_call()
    assert info.value.retry_after_s == pytest.approx(10)
    assert info.value.status_code == 503
    clock.advance(7.5)
    assert b.remaining_s() == pytest.approx(2.5)
    with pytest.raises(CircuitOpenError) as info:
        b.before_call()
    assert info.value.retry_after_s == pytest.approx(2.5)
    assert "1 connection failures" in str(info.value)


def test_one_probe_in_half_open_then_closes_on_success(clock: Clock) -> None:
    b = breaker(clock, failures=2, reset_s=10)
    b.record_failure()
    b.record_failure()
    clock.advance(10)
    assert b.state == "half_open"
    assert b.before_call() is True  # the probe
    for _ in range(3):  # everyone else still fails fast while the probe runs
        with pytest.raises(CircuitOpenError) as info:
            b.before_call()
        assert 0 < info.value.retry_after_s <= 1
    assert b.state == "half_open"
    b.record_success()
    assert b.state == "closed"
    assert b.before_call() is False
    assert b.changes == ["open", "closed"]  # type: ignore[attr-defined]


def test_reopens_when_the_probe_fails(clock: Clock) -> None:
    b = breaker(clock, failures=2, reset_s=10)
    b.record_failure()
    b.record_failure()
    clock.advance(12)
    assert b.before_call() is True
    b.record_failure()
    assert b.state == "open"
    assert b.remaining_s() == pytest.approx(10)  # a full cool-down from the probe's failure
    clock.advance(10)
    assert b.before_call() is True  # the next probe


def test_failures_while_open_do_not_lengthen_the_cool_down(clock: Clock) -> None:
    b = breaker(clock, failures=2, reset_s=10)
    b.record_failure()
    b.record_failure()  # opens now
    for _ in range(3):  # connects that began before it opened fail later, one by one
        clock.advance(3)
        b.record_failure()
    assert b.consecutive_failures == 5
    assert b.remaining_s() == pytest.approx(1)  # counted from the opening: 10 - 9
    clock.advance(1)
    assert b.state == "half_open"
    assert b.before_call() is True  # on time, not 9 s late
    assert b.changes == ["open"]  # type: ignore[attr-defined]


async def test_a_straggler_failing_during_the_probe_is_not_the_probe(clock: Clock) -> None:
    b = breaker(clock, failures=1, reset_s=10)
    b.record_failure()
    clock.advance(10)
    assert b.before_call() is True  # the probe is out
    b.record_failure(probe=False)  # a connect from before the opening fails now
    assert b.state == "half_open"
    with pytest.raises(CircuitOpenError):
        b.before_call()  # still only the one probe
    b.record_success()
    assert b.state == "closed"


async def test_call_counts_transient_errors_and_timeouts_only(clock: Clock) -> None:
    b = breaker(clock, failures=2, reset_s=10)

    async def refused() -> None:
        raise ConnectionRefusedError("connection refused")

    async def stalled() -> None:
        raise TimeoutError

    async def bad_sql() -> None:
        raise ValueError("the caller's own error")

    async def fine() -> int:
        return 42

    with pytest.raises(ValueError, match="own error"):
        await b.call(bad_sql)
    assert b.consecutive_failures == 0
    with pytest.raises(ConnectionRefusedError):
        await b.call(refused)
    # A server that accepts and never answers is as down as one that refuses.
    with pytest.raises(TimeoutError):
        await b.call(stalled)
    assert b.state == "open"
    with pytest.raises(CircuitOpenError):
        await b.call(fine)
    clock.advance(10)
    assert await b.call(fine) == 42
    assert b.state == "closed"


async def test_call_probe_with_a_non_transient_error_lets_the_next_probe_through(
    clock: Clock,
) -> None:
    b = breaker(clock, failures=1, reset_s=1)
    b.record_failure()
    clock.advance(1)

    async def bad_sql() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await b.call(bad_sql)
    assert b.before_call() is True  # not stuck in "probing"


async def test_retrying_retries_transient_errors_only() -> None:
    calls = 0

    async def attempt(exc: Exception) -> None:
        nonlocal calls
        async for a in retrying(3, 0.001):
            with a:
                calls += 1
                raise exc

    with pytest.raises(ConnectionResetError):
        await attempt(ConnectionResetError())
    assert calls == 3
    calls = 0
    with pytest.raises(ValueError, match="x"):
        await attempt(ValueError("x"))
    assert calls == 1
    calls = 0
    with pytest.raises(CircuitOpenError):
        await attempt(CircuitOpenError("open", retry_after_s=1))
    assert calls == 1


async def test_retrying_stops_at_the_deadline() -> None:
    calls = 0

    async def always_reset() -> None:
        nonlocal calls
        async for a in retrying(1000, 0.01, deadline_s=0.2):
            with a:
                calls += 1
                raise ConnectionResetError

    started = time.monotonic()
    with pytest.raises(ConnectionResetError):
        await always_reset()
    assert 1 < calls < 1000
    assert time.monotonic() - started < 5


# inside Database ----------------------------------------------------------------------------


@pytest.fixture
async def guarded(
    proxy: FaultProxy, neondb_database_url: str, driver: str, clock: Clock
) -> AsyncIterator[Database]:
    url = proxied_url(proxy, neondb_database_url)
    async with open_database(
        url,
        db_driver=driver,
        db_breaker_failures=3,
        db_breaker_reset_s=30,
        db_connect_timeout_s=1,
    ) as db:
        db.breaker.clock = clock
        yield db


async def select_one(db: Database) -> int:
    async with db.read_session() as s:
        return int((await s.execute(text("SELECT 1"))).scalar_one())


async def test_circuit_opens_after_failed_connects_and_then_costs_no_connection(
    guarded: Database, proxy: FaultProxy, clock: Clock
) -> None:
    db = guarded
    proxy.mode = "refuse"
    await cut(proxy)
    for _ in range(3):  # each session retries its connect (DB_RETRY_ATTEMPTS=3)
        if db.breaker.state == "open":
            break
        with pytest.raises(DatabaseUnavailableError):
            await select_one(db)
    assert db.breaker.state == "open"
    assert db.breaker.consecutive_failures >= 3

    proxy.reset_counts()
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            await select_one(db)
    assert proxy.accepted == 0  # not even a connection attempt

    proxy.mode = "pass"  # any attempt would now be forwarded and counted
    proxy.reset_counts()
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(CircuitOpenError) as info:
            await select_one(db)
    assert time.monotonic() - started < 2  # fail fast: no connect timeout, no backoff
    assert proxy.connections == 0
    assert info.value.retry_after_s == pytest.approx(30)
    clock.advance(20)
    with pytest.raises(CircuitOpenError) as info:
        await select_one(db)
    assert info.value.retry_after_s == pytest.approx(10)
    body = await database_health(db)
    assert body["status"] == "unhealthy"
    assert body["database"] == "circuit open"
    assert proxy.connections == 0

    clock.advance(10)  # cool-down over: one probe goes through and closes the circuit
    assert await select_one(db) == 1
    assert db.breaker.state == "closed"
    assert proxy.connections == 1


async def test_stalled_connects_open_the_circuit_too(guarded: Database, proxy: FaultProxy) -> None:
    db = guarded
    db.breaker.failures = 1
    db.settings.db_retry_attempts = 1
    proxy.mode = "stall"
    await cut(proxy)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError):
        await select_one(db)
    assert time.monotonic() - started < 6
    assert db.breaker.state == "open"
    started = time.monotonic()
    with pytest.raises(CircuitOpenError):
        await select_one(db)
    assert time.monotonic() - started < 1


async def test_connects_failing_after_the_circuit_opened_keep_its_cool_down(
    guarded: Database, proxy: FaultProxy, clock: Clock
) -> None:
    """A connect that was under way when the circuit opened fails later: the circuit
    still half-opens DB_BREAKER_RESET_S after it opened, not after that failure."""
    db = guarded
    db.breaker.failures = 1
    db.settings.db_retry_attempts = 1
    await cut(proxy)
    proxy.mode = "stall"
    proxy.reset_counts()
    straggler = asyncio.create_task(select_one(db))  # passes the closed breaker, then hangs
    await wait_until(lambda: proxy.accepted == 1, timeout_s=5)
    proxy.mode = "refuse"
    with pytest.raises(DatabaseUnavailableError):
        await select_one(db)  # a real refused connect opens the circuit
    assert db.breaker.state == "open"
    assert db.breaker.consecutive_failures == 1
    assert not straggler.done()
    clock.advance(20)
    proxy.drop_all()  # the stalled connect fails now, 20 s after the opening
    with pytest.raises(DatabaseUnavailableError):
        await straggler
    assert db.breaker.consecutive_failures == 2
    assert db.breaker.remaining_s() == pytest.approx(10)
    with pytest.raises(CircuitOpenError) as info:
        await select_one(db)
    assert info.value.retry_after_s == pytest.approx(10)

    proxy.mode = "pass"
    clock.advance(10)  # 30 s after the opening: the probe goes through and closes it
    proxy.reset_counts()
    assert await select_one(db) == 1
    assert db.breaker.state == "closed"
    assert proxy.connections == 1
