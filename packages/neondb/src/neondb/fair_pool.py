"""A connection pool that serves waiters in arrival order.

SQLAlchemy's `AsyncAdaptedQueuePool` waits on an `asyncio.Queue`: a connection put back
wakes the first waiter, but until that waiter runs, any newcomer finds the connection in
the queue and takes it; the woken waiter, finding the queue empty, goes to the back. Under
overload a few unlucky requests wait many times as long as the rest (p99 10-30x the p50).

`FairAsyncQueuePool` puts a FIFO gate with one slot per connection in front of checkout: a
slot freed by a check-in is handed straight to the longest waiter, so a newcomer never
overtakes it, and the connection it then takes is guaranteed to be there (or to be
openable: the pool has room). `DB_POOL_TIMEOUT_S` bounds the wait in the gate and ends it
with the pool's own `TimeoutError` (so `PoolExhaustedError`, a 503), as before. NullPool
(serverless mode) has no limit and needs no gate; the synchronous engine's `QueuePool`
waits on a `threading.Condition` and is left as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from sqlalchemy import exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import await_

__all__ = ["FairAsyncQueuePool", "FifoGate"]


class FifoGate:
    """`slots` holders at a time; the others wait and get in strictly in arrival order.
    Used from one event loop at a time (the loop that runs the pool's callers)."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """How many callers are waiting for a slot."""
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self, timeout_s: float | None) -> bool:
        """Take a slot, waiting up to `timeout_s` behind earlier callers; False when the
        wait ran out (no slot taken)."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
            return True
        except TimeoutError:
            return self._granted(waiter)  # True: handed a slot just as the wait ran out
        except BaseException:  # cancelled: the slot this waiter may have got moves on
            if self._granted(waiter):
                self.release()
            raise

    def _granted(self, waiter: asyncio.Future[None]) -> bool:
        if waiter.done() and not waiter.cancelled():
            return True
        with contextlib.suppress(ValueError):  # release() may have dropped it already
            self._waiters.remove(waiter)
        return False

    def release(self) -> None:
        """Give the slot back: straight to the longest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """`AsyncAdaptedQueuePool` whose checkouts are served first come, first served."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = FifoGate(self.size() + max(self._max_overflow, 0))

    def _do_get(self) -> ConnectionPoolEntry:
        # Called from SQLAlchemy's sync code inside the async engine's greenlet, where
        # `await_` waits on the event loop, as the parent pool's own queue does.
        if not await_(self.gate.acquire(self._timeout)):
            raise exc.TimeoutError(
                f"QueuePool limit of size {self.size()} overflow {self._max_overflow} "
                f"reached, connection timed out, timeout {self._timeout:.2f}",
                code="3o7r",
            )
        try:
            return super()._do_get()
        except BaseException:
            self.gate.release()
            raise

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            self.gate.release()
