"""Database health: a real round trip per engine, bounded in time, never an exception.

"Database down" and "pool busy" are different answers. When every pooled connection is
checked out (or someone waits for one), a check through the pool would queue behind the
load and time out, pulling a healthy instance out of the load balancer; the check then runs
on a connection of its own, outside the pool, and says `busy: true`.
"""

from __future__ import annotations

from typing import Any

from neondb.database import Database, Role
from neondb.errors import CircuitOpenError, classify

__all__ = ["database_health", "engine_health"]


async def engine_health(db: Database, role: Role, timeout_s: float) -> dict[str, Any]:
    """`{"status": "healthy", "database": "connected", "busy": ..., "latency_ms": ...,
    "breaker": {...}}` for one engine, or `"unhealthy"` with a one-line reason."""
    breaker = db.breakers()[role]
    body: dict[str, Any] = {"status": "healthy", "database": "connected", "busy": False}
    try:
        if breaker.state == "open":
            breaker.before_call()
        if db.pool_busy(role):
            body["busy"] = True
            latency = await db.probe(timeout_s, role=role)
        else:
            try:
                latency = await db.ping(timeout_s, role=role)
            except TimeoutError:
                if not db.pool_busy(role):
                    raise
                # The pool filled up while this check waited in it: ask outside it.
                body["busy"] = True
                latency = await db.probe(timeout_s, role=role)
        body["latency_ms"] = round(latency, 2)
    except CircuitOpenError:
        body.update(status="unhealthy", database="circuit open")
    except TimeoutError:
        body.update(status="unhealthy", database="timeout")
    except Exception as e:
        # Whatever the failure, the answer is "unhealthy", never a 500: that is the check.
        mapped = classify(e)
        reason = "unreachable" if mapped is None or mapped.status_code == 503 else "error"
        body.update(status="unhealthy", database=reason)
    body["breaker"] = {
        "state": breaker.state,
        "consecutive_failures": breaker.consecutive_failures,
        "retry_after_s": round(breaker.remaining_s(), 3),
    }
    return body


async def database_health(db: Database, *, timeout_s: float | None = None) -> dict[str, Any]:
    """The primary's health at the top level (`status` decides 200 or 503), the pool
    figures of each engine, and with a replica its own health under `replica` (a replica
    that is down leaves the status healthy: reads fall back to the primary, `"reads":
    "primary"`). Each check is bounded by the connect timeout (or `timeout_s`), so a hung
    database cannot hang the health check."""
    limit = timeout_s if timeout_s is not None else min(db.settings.db_connect_timeout_s, 5.0)
    body = await engine_health(db, "primary", limit)
    body["pool"] = db.pool_stats()
    body["driver"] = db.driver
    if "replica" in db.breakers():
        replica = await engine_health(db, "replica", limit)
        replica["reads"] = "replica" if replica["status"] == "healthy" else "primary"
        body["replica"] = replica
    return body
