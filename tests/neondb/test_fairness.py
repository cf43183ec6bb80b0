"""neondb.fairness: a per-key concurrency limit (waiting briefly, then refusing), that
forgets idle keys, and its FastAPI dependency (429 with Retry-After, documented)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Header

from neondb.fairness import (
    FAIR_SHARE_RESPONSES,
    FairShareExceeded,
    KeyedLimiter,
    limit_per_key,
)


async def hold(limiter: KeyedLimiter, key: str, release: asyncio.Event, log: list[str]) -> None:
    async with limiter.slot(key):
        log.append(f"in {key}")
        await release.wait()
    log.append(f"out {key}")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_at_most_limit_per_key_and_other_keys_unaffected() -> None:
    limiter = KeyedLimiter(2, queue_timeout_s=5)
    release = asyncio.Event()
    log: list[str] = []
    tasks = [asyncio.create_task(hold(limiter, "heavy", release, log)) for _ in range(5)]
    await settle()
    assert limiter.active("heavy") == 2
    assert limiter.waiting("heavy") == 3
    # Another key gets its slot at once, while "heavy" is full.
    async with asyncio.timeout(1), limiter.slot("light"):
        assert limiter.active("light") == 1
    assert limiter.active("light") == 0
    release.set()
    await asyncio.gather(*tasks)
    assert log.count("in heavy") == 5
    assert len(limiter) == 0


async def test_waiters_are_served_in_arrival_order() -> None:
    limiter = KeyedLimiter(1, queue_timeout_s=5)
    order: list[int] = []
    gate = asyncio.Event()

    async def one(n: int) -> None:
        async with limiter.slot("k"):
            order.append(n)
            if n == 0:
                await gate.wait()

    tasks = []
    for n in range(4):
        tasks.append(asyncio.create_task(one(n)))
        await settle()
    gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_excess_waits_then_is_refused() -> None:
    limiter = KeyedLimiter(1, queue_timeout_s=0.1, retry_after_s=2.5)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, "k", release, []))
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(FairShareExceeded) as caught:
        await limiter.acquire("k")
    assert loop.time() - started >= 0.09
    assert caught.value.retry_after_header == "3"
    assert limiter.waiting("k") == 0
    assert limiter.active("k") == 1
    release.set()
    await holder
    assert len(limiter) == 0


async def test_zero_queue_timeout_refuses_at_once() -> None:
    limiter = KeyedLimiter(1, queue_timeout_s=0)
    await limiter.acquire("k")
    with pytest.raises(FairShareExceeded):
        await limiter.acquire("k")
    limiter.release("k")
    assert len(limiter) == 0


async def test_a_waiter_freed_just_before_its_timeout_keeps_or_passes_the_slot() -> None:
    # A slot handed over as the wait ends is not lost: the count always returns to zero.
    limiter = KeyedLimiter(1, queue_timeout_s=0.05)
    for delay in (0.03, 0.045, 0.05, 0.055, 0.07):
        await limiter.acquire("k")
        waiters = [asyncio.create_task(limiter.acquire("k")) for _ in range(3)]
        await asyncio.sleep(delay)
        limiter.release("k")
        results = await asyncio.gather(*waiters, return_exceptions=True)
        got = [r for r in results if r is None]
        for _ in got:
            limiter.release("k")
        assert all(r is None or isinstance(r, FairShareExceeded) for r in results)
        assert len(limiter) == 0, delay


async def test_cancelled_waiter_leaves_no_trace() -> None:
    limiter = KeyedLimiter(1, queue_timeout_s=5)
    await limiter.acquire("k")
    waiter = asyncio.create_task(limiter.acquire("k"))
    await settle()
    assert limiter.waiting("k") == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting("k") == 0
    limiter.release("k")
    assert len(limiter) == 0


async def test_idle_keys_are_forgotten() -> None:
    limiter = KeyedLimiter(2, queue_timeout_s=1)
    for n in range(10_000):
        async with limiter.slot(f"user-{n}"):
            pass
    assert len(limiter) == 0


async def test_limit_zero_means_no_limit() -> None:
    limiter = KeyedLimiter(0)
    for _ in range(50):
        await limiter.acquire("k")
    assert len(limiter) == 0
    with pytest.raises(ValueError, match="limit"):
        KeyedLimiter(-1)


# the FastAPI dependency -----------------------------------------------------------------


def build_app(limiter: KeyedLimiter, entered: asyncio.Event, gate: asyncio.Event) -> FastAPI:
    async def caller(x_caller: str = Header()) -> str:
        return x_caller

    per_caller = limit_per_key(caller, limiter)
    app = FastAPI()

    @app.get("/work", dependencies=[Depends(per_caller)], responses=FAIR_SHARE_RESPONSES)
    async def work(slow: bool = False) -> dict[str, str]:
        if slow:
            entered.set()
            await gate.wait()
        return {"ok": "yes"}

    return app


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, KeyedLimiter, Any, Any]]:
    limiter = KeyedLimiter(1, queue_timeout_s=0.1, retry_after_s=1)
    entered, gate = asyncio.Event(), asyncio.Event()
    app = build_app(limiter, entered, gate)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client, limiter, entered, gate


async def test_dependency_answers_429_with_retry_after(
    api: tuple[httpx.AsyncClient, KeyedLimiter, Any, Any],
) -> None:
    client, limiter, entered, gate = api
    slow = asyncio.create_task(client.get("/work?slow=true", headers={"X-Caller": "a"}))
    await asyncio.wait_for(entered.wait(), 5)
    refused = await client.get("/work", headers={"X-Caller": "a"})
    assert refused.status_code == 429
    assert refused.json() == {"detail": "too many concurrent requests, retry later"}
    assert refused.headers["Retry-After"] == "1"
    other = await client.get("/work", headers={"X-Caller": "b"})
    assert other.status_code == 200
    gate.set()
    assert (await slow).status_code == 200
    assert (await client.get("/work", headers={"X-Caller": "a"})).status_code == 200
    assert len(limiter) == 0


async def test_dependency_frees_the_slot_when_the_route_fails() -> None:
    limiter = KeyedLimiter(1, queue_timeout_s=0)

    async def caller() -> str:
        return "a"

    app = FastAPI()

    @app.get("/boom", dependencies=[Depends(limit_per_key(caller, lambda request: limiter))])
    async def boom() -> None:
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(3):
            assert (await client.get("/boom")).status_code == 500
    assert len(limiter) == 0


def test_429_is_documented() -> None:
    app = build_app(KeyedLimiter(1), asyncio.Event(), asyncio.Event())
    responses = app.openapi()["paths"]["/work"]["get"]["responses"]
    assert "429" in responses
