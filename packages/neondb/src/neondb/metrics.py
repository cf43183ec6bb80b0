"""Prometheus metrics: the pool, the wait for a pooled connection, statement latency, errors,
breaker states, connections opened, read fallbacks, and HTTP requests.

Pool, breaker and in-flight figures are read when scraped (a collector over the live
`Database` objects), so they are never stale and cost nothing between scrapes. The hot
paths use label children bound once (`PoolMeter`, the session makers, the HTTP
middleware's cache), never a `labels()` lookup per request. prometheus-client comes with
`neondb[fastapi]`; without it the instruments below do nothing, so the core runs without it.

    neondb_pool_{size,checked_out,checked_in,max,waiting}{db,role}   gauges
    neondb_pool_wait_seconds{db,role}                                 histogram
    neondb_statement_seconds{db,kind}       statement only, the pool wait excluded
    neondb_errors_total{db,error}           by neondb error class
    neondb_breaker_state{db,role}           0 closed, 1 half-open, 2 open
    neondb_connections_opened_total{db,role,reason}
        reason: warmup, demand, replacement (of a dead one), recycle, serverless, probe
    neondb_reads_on_primary_total{db,reason}  reads meant for the replica, served by the
        primary: replica_down (fallback), circuit_open (fallback), wrote, asked
    neondb_http_request_seconds{method,route,status}   route = the path template
    neondb_http_requests_in_flight
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from neondb.extras import installed

if TYPE_CHECKING:
    from neondb.database import Database

__all__ = [
    "CONNECTS",
    "ENABLED",
    "ERRORS",
    "HTTP_SECONDS",
    "POOL_WAIT_SECONDS",
    "READS_ON_PRIMARY",
    "STATEMENT_SECONDS",
    "HttpMetricsMiddleware",
    "PoolMeter",
    "register_database",
]

ENABLED = installed("prometheus_client")
log = logging.getLogger("neondb")


class _Noop:
    """Stands in for a metric when prometheus-client is not installed."""

    def labels(self, *values: str) -> _Noop:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


STATEMENT_SECONDS: Any = _Noop()
POOL_WAIT_SECONDS: Any = _Noop()
ERRORS: Any = _Noop()
CONNECTS: Any = _Noop()
READS_ON_PRIMARY: Any = _Noop()
HTTP_SECONDS: Any = _Noop()
_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
_databases: weakref.WeakSet[Database] = weakref.WeakSet()
_in_flight = [0]  # requests being served, read by the collector when scraped
# Pool waits longer than this are logged (at most once per interval, with a count): the
# pool being too small is a different problem from slow SQL, and gets its own message.
POOL_WAIT_LOG_INTERVAL_S = 10.0


def register_database(db: Database) -> None:
    """Make `db`'s pool and breaker figures part of the default registry's scrape."""
    _databases.add(db)


class PoolMeter:
    """The wait for a pooled connection on one engine: how many wait now, how long each
    waited (a histogram child bound once), and a rate-limited log line for long waits."""

    __slots__ = ("_last_log", "_slow_since_log", "db", "observe", "role", "slow_s", "waiting")

    def __init__(self, db: str, role: str, slow_s: float) -> None:
        self.db = db
        self.role = role
        self.slow_s = slow_s
        self.waiting = 0
        self.observe: Callable[[float], None] = POOL_WAIT_SECONDS.labels(db, role).observe
        self._last_log = 0.0
        self._slow_since_log = 0

    def waited(self, seconds: float) -> None:
        self.observe(seconds)
        if seconds <= self.slow_s:
            return
        self._slow_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= POOL_WAIT_LOG_INTERVAL_S:
            log.warning(
                "database %s (%s): waited %.0f ms for a pooled connection (%d such waits "
                "since the last message, %d waiting now): the pool is too small for the "
                "load, this is not slow SQL",
                self.db,
                self.role,
                seconds * 1000,
                self._slow_since_log,
                self.waiting,
            )
            self._last_log = now
            self._slow_since_log = 0


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetricsMiddleware:
    """Pure ASGI: request duration by method, route template and status, and requests in
    flight. The route is the template (`/api/tasks/{task_id}`), never the raw path, so the
    label set stays small; a request no route matched is `unmatched`. Children are cached
    per (method, route, status)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception with no response sent reaches the client as a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        _in_flight[0] += 1
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            _in_flight[0] -= 1
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            # A client may send any method token (h11 accepts them): labelled as it is only
            # when it is a standard one, so that made-up methods cannot add series forever.
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (method, template, status)
            observe = self._children.get(key)
            if observe is None:
                observe = HTTP_SECONDS.labels(key[0], template, str(status)).observe
                self._children[key] = observe
            observe(time.perf_counter() - started)


if ENABLED:
    from prometheus_client import REGISTRY, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector

    _FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
    STATEMENT_SECONDS = Histogram(
        "neondb_statement_seconds",
        "Time from sending a statement to its result (the pool wait excluded), by database "
        "and session kind",
        ["db", "kind"],
        buckets=_FAST,
    )
    POOL_WAIT_SECONDS = Histogram(
        "neondb_pool_wait_seconds",
        "Time a session waited for a pooled connection (opening one included when the pool "
        "had room)",
        ["db", "role"],
        buckets=(0.0001, 0.0005, *_FAST),
    )
    ERRORS = Counter(
        "neondb_errors_total", "Database errors by neondb error class", ["db", "error"]
    )
    CONNECTS = Counter(
        "neondb_connections_opened_total",
        "Physical connections opened, by engine and reason (warmup, demand, replacement, "
        "recycle, serverless, probe)",
        ["db", "role", "reason"],
    )
    READS_ON_PRIMARY = Counter(
        "neondb_reads_on_primary_total",
        "Reads meant for the replica that the primary served, by reason (replica_down, "
        "circuit_open: fallbacks; wrote, asked: read-your-writes)",
        ["db", "reason"],
    )
    HTTP_SECONDS = Histogram(
        "neondb_http_request_seconds",
        "HTTP request duration by method, route template and status",
        ["method", "route", "status"],
        buckets=_FAST,
    )

    class _LiveDatabases(Collector):
        def collect(self) -> Iterable[Metric]:
            names = ("size", "checked_out", "checked_in", "max", "waiting")
            gauges = {
                n: GaugeMetricFamily(
                    f"neondb_pool_{n}", f"Pool connections: {n}", labels=["db", "role"]
                )
                for n in names
            }
            breaker = GaugeMetricFamily(
                "neondb_breaker_state",
                "Circuit breaker per engine: 0 closed, 1 half-open, 2 open",
                labels=["db", "role"],
            )
            for db in list(_databases):
                if not db.started:
                    continue  # stopped (a test's, a reloaded app's): nothing live to report
                for role, stats in db.pool_stats().items():
                    if isinstance(stats, dict):
                        for n in names:
                            value = stats.get(n)
                            if isinstance(value, int | float):
                                gauges[n].add_metric([db.name, role], value)
                for role, b in db.breakers().items():
                    breaker.add_metric([db.name, role], _BREAKER_STATES[b.state])
            yield from gauges.values()
            yield breaker
            in_flight = GaugeMetricFamily(
                "neondb_http_requests_in_flight", "HTTP requests being served"
            )
            in_flight.add_metric([], _in_flight[0])
            yield in_flight

    REGISTRY.register(_LiveDatabases())
