"""Prometheus metrics: pool figures, statement latency, errors and the breaker state.

Pool and breaker figures are read when scraped (a collector over the live `Database`
objects), so they are never stale and cost nothing between scrapes. prometheus-client comes
with `neondb[fastapi]`; without it the instruments below do nothing, so the core runs
without it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from neondb.extras import installed

if TYPE_CHECKING:
    from neondb.database import Database

__all__ = ["CONNECTS", "ENABLED", "ERRORS", "STATEMENT_SECONDS", "register_database"]

ENABLED = installed("prometheus_client")


class _Noop:
    """Stands in for a metric when prometheus-client is not installed."""

    def labels(self, *values: str) -> _Noop:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


STATEMENT_SECONDS: Any = _Noop()
ERRORS: Any = _Noop()
CONNECTS: Any = _Noop()
_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
_databases: weakref.WeakSet[Database] = weakref.WeakSet()


def register_database(db: Database) -> None:
    """Make `db`'s pool and breaker figures part of the default registry's scrape."""
    _databases.add(db)


if ENABLED:
    from prometheus_client import REGISTRY, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector

    STATEMENT_SECONDS = Histogram(
        "neondb_statement_seconds",
        "Time from sending a statement to its result, by database and session kind",
        ["db", "kind"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    ERRORS = Counter(
        "neondb_errors_total", "Database errors by neondb error class", ["db", "error"]
    )
    CONNECTS = Counter("neondb_connections_opened_total", "Physical connections opened", ["db"])

    class _LiveDatabases(Collector):
        def collect(self) -> Iterable[Metric]:
            names = ("size", "checked_out", "checked_in", "max")
            gauges = {
                n: GaugeMetricFamily(
                    f"neondb_pool_{n}", f"Pool connections: {n}", labels=["db", "role"]
                )
                for n in names
            }
            breaker = GaugeMetricFamily(
                "neondb_breaker_state",
                "Circuit breaker: 0 closed, 1 half-open, 2 open",
                labels=["db"],
            )
            for db in list(_databases):
                for role, stats in db.pool_stats().items():
                    if isinstance(stats, dict):
                        for n in names:
                            value = stats.get(n)
                            if isinstance(value, int | float):
                                gauges[n].add_metric([db.name, role], value)
                breaker.add_metric([db.name], _BREAKER_STATES[db.breaker.state])
            yield from gauges.values()
            yield breaker

    REGISTRY.register(_LiveDatabases())
