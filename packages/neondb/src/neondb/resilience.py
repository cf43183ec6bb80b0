"""Retries with backoff, and a circuit breaker, for connection establishment and safe reads.

What is retried (tenacity, exponential backoff with full jitter):

* opening a new connection: nothing was sent, so repeating it is always safe;
* a statement in a read-only session that failed because its connection died;
* a statement that never left the client (the connection was found dead before sending).

A write whose connection died mid-flight is never replayed: it surfaces as
`WriteOutcomeUnknownError` (503).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from neondb.errors import CircuitOpenError, NeonDBError, is_timeout, is_transient

__all__ = ["CircuitBreaker", "retrying"]

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]


def retrying(
    attempts: int,
    backoff_s: float,
    *,
    deadline_s: float | None = None,
    timeouts: bool = True,
) -> AsyncRetrying:
    """A tenacity policy for transient database errors: `attempts` tries in all, backoff
    `backoff_s * 2**n` with full jitter, capped at 5 s per wait.

    A `NeonDBError` is never retried: it is final (an open circuit) or has already had its
    retries (a connection that could not be opened), and retrying it again would multiply
    the wait (attempts x attempts connect timeouts for a read). `timeouts=False`: a wait
    that ran out is final (a server that accepts and never answers is not retried into
    several connect timeouts per request; the breaker counts it instead)."""
    stop: Any = stop_after_attempt(attempts)
    if deadline_s is not None:
        stop = stop | stop_after_delay(deadline_s)
    return AsyncRetrying(
        stop=stop,
        wait=wait_random_exponential(multiplier=backoff_s, max=5.0) if backoff_s else None,  # type: ignore[arg-type]
        retry=retry_if_exception(
            lambda e: (
                is_transient(e)
                and not isinstance(e, NeonDBError)
                and (timeouts or not is_timeout(e))
            )
        ),
        reraise=True,
    )


@dataclass
class CircuitBreaker:
    """Opens after `failures` consecutive connection failures; while open, calls fail at
    once with `CircuitOpenError`; after `reset_s` exactly one probe is let through, and its
    result closes or re-opens the circuit.

    Written here rather than taken from PyPI: purgatory 3.0's half-open state admits every
    caller instead of one probe, and aiobreaker has had no release since 2021; neither
    reports the cool-down left, which Retry-After needs.
    """

    failures: int
    reset_s: float
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[BreakerState], None] | None = None
    _failed: int = 0
    _opened_at: float | None = None
    _probing: bool = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._probing or self.clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return "open"

    @property
    def consecutive_failures(self) -> int:
        return self._failed

    def remaining_s(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (self.clock() - self._opened_at))

    def before_call(self) -> bool:
        """Raise CircuitOpenError if the call must not go ahead. True when this call is
        the half-open probe (its outcome decides the circuit)."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        wait = self.remaining_s() if state == "open" else min(1.0, self.reset_s)
        raise CircuitOpenError(
            f"circuit open after {self._failed} connection failures in a row",
            retry_after_s=max(wait, 0.001),
        )

    def record_success(self) -> None:
        changed = self._opened_at is not None
        self._failed = 0
        self._opened_at = None
        self._probing = False
        if changed and self.on_change:
            self.on_change("closed")

    def record_failure(self, *, probe: bool | None = None) -> None:
        """Count a failed connect. `probe`: whether it was the half-open probe (default:
        whether a probe is out). A failed probe re-opens the circuit for a full cool-down;
        any other failure while open is a connect that began before the circuit opened,
        and leaves the cool-down counted from the opening (moving it would keep the
        circuit open for as long as stragglers keep failing)."""
        self._failed += 1
        if probe is None:
            probe = self._probing
        if self._opened_at is not None:
            if probe:
                self._opened_at = self.clock()
                self._probing = False
            return
        if self._failed >= self.failures:
            self._opened_at = self.clock()
            self._probing = False
            if self.on_change:
                self.on_change("open")

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` through the breaker; only transient errors and timeouts (a database
        that accepts and never answers) count as failures."""
        probe = self.before_call()
        try:
            result = await fn()
        except BaseException as exc:
            if isinstance(exc, NeonDBError | Exception) and (
                is_transient(exc) or isinstance(exc, TimeoutError)
            ):
                self.record_failure(probe=probe)
            elif probe:
                self._probing = False  # inconclusive: let the next caller probe
            raise
        self.record_success()
        return result

    def reset(self) -> None:
        self.record_success()
