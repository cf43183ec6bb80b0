"""Database health: a real round trip, bounded in time, never an exception."""

from __future__ import annotations

from typing import Any

from neondb.database import Database
from neondb.errors import CircuitOpenError, classify

__all__ = ["database_health"]


async def database_health(db: Database, *, timeout_s: float | None = None) -> dict[str, Any]:
    """`{"status": "healthy", "database": "connected", "latency_ms": ...}`, or
    `"unhealthy"` with a one-line reason. Bounded by the connect timeout (or `timeout_s`),
    so a hung database cannot hang the health check."""
    limit = timeout_s if timeout_s is not None else min(db.settings.db_connect_timeout_s, 5.0)
    body: dict[str, Any] = {"status": "healthy", "database": "connected"}
    try:
        if db.breaker.state == "open":
            db.breaker.before_call()
        body["latency_ms"] = round(await db.ping(limit), 2)
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
        "state": db.breaker.state,
        "consecutive_failures": db.breaker.consecutive_failures,
        "retry_after_s": round(db.breaker.remaining_s(), 3),
    }
    body["pool"] = db.pool_stats()
    body["driver"] = db.driver
    return body
