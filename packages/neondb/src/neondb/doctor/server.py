"""The doctor's steps on a logged-in connection: pooler or direct (from the server's
behaviour), latency, `statement_timeout` as the layer's sessions see it, and
`max_connections` against the pools the app will open."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from neondb.doctor.driver import Probe, login
from neondb.doctor.report import Report
from neondb.engine import build_engine
from neondb.resilience import CircuitBreaker
from neondb.target import Target
from neondb.url import DatabaseURL

__all__ = ["PoolerProbe", "check_connections", "check_latency", "check_pooler", "check_timeout"]

_PID = "SELECT pg_backend_pid()"


@dataclass(frozen=True)
class PoolerProbe:
    """What two client connections saw of the server processes behind them."""

    first: list[int]  # pg_backend_pid() of the first client connection, twice
    second: list[int]  # of a second client connection opened in between, twice
    key_pid: int  # the process id the first connection was given at login

    @property
    def shared(self) -> bool:
        """Two clients served by one server process, or one client by two: only a
        transaction (or statement) pooler does that; a direct connection never does."""
        return bool(set(self.first) & set(self.second)) or len(set(self.first)) > 1

    @property
    def proxied(self) -> bool:
        """The login announced another process than the one serving: something in
        between rewrote it (a pooler, or Neon's proxy, which also fronts direct endpoints)."""
        return self.key_pid not in self.first


async def _pid(probe: Probe) -> int:
    return int((await probe.row(_PID))[0])


async def probe_pooler(a: Probe, url: DatabaseURL, timeout_s: float) -> PoolerProbe:
    # The first client's transaction ends before the second logs in: a pooler hands the
    # server connection it just released (PgBouncer reuses the most recent) to the next
    # client that asks, while a direct connection keeps its own process for its life.
    first = [await _pid(a)]
    b = await login(url, a.driver, timeout_s)
    try:
        second = [await _pid(b)]
        first.append(await _pid(a))
        second.append(await _pid(b))
    finally:
        await b.close()
    return PoolerProbe(first, second, a.key_pid)


async def check_pooler(report: Report, a: Probe, target: Target, timeout_s: float) -> bool:
    """Adds the pooler step; returns whether a transaction pooler was seen."""
    assert target.url is not None
    try:
        seen = await probe_pooler(a, target.url, timeout_s)
    except Exception as e:
        report.add(
            "pooler",
            "warn",
            f"could not open a second connection to compare: {e}",
            "run `neondb doctor` again when the server has a connection free",
        )
        return target.pooler
    data: dict[str, Any] = {
        "detected": "transaction pooler" if seen.shared else "direct",
        "assumed": "transaction pooler" if target.pooler else "direct",
        "server_pids": {"first": seen.first, "second": seen.second},
        "proxied": seen.proxied,
    }
    if seen.shared:
        found = (
            "transaction pooler: two client connections were served by the same server "
            f"process (pids {seen.first} and {seen.second})"
        )
    elif seen.proxied:
        found = (
            "direct behaviour (each client keeps its server process) behind a proxy or a "
            "session pooler (the login announced another process id than the serving one)"
        )
    else:
        found = "direct: each client connection has a server process of its own"
    assumed = f"the layer assumes {data['assumed']} ({target.pooler_reason})"
    if seen.shared and not target.pooler:
        report.add(
            "pooler",
            "fail",
            f"{found}; but {assumed}",
            "set DB_POOLER=transaction: behind a transaction pooler the layer must not keep "
            "prepared statements or rely on session SETs, which another client's "
            "transaction would see or lose",
            data=data,
        )
    elif target.pooler and not seen.shared:
        report.add(
            "pooler",
            "warn",
            f"{found}; {assumed}",
            "if this endpoint is direct, DB_POOLER=none lets the layer cache prepared "
            "statements and set statement_timeout once per connection (a busy pooler can "
            "also hide itself from this probe: then nothing to do)",
            data=data,
        )
    else:
        report.add("pooler", "ok", f"{found}; {assumed}", data=data)
    return seen.shared or target.pooler


async def check_latency(report: Report, a: Probe, rounds: int = 10) -> None:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await a.ping()
        times.append((time.perf_counter() - started) * 1000)
    low, mid, high = min(times), statistics.median(times), max(times)
    report.add(
        "latency",
        "ok",
        f"{rounds} round trips (SELECT 1): min {low:.2f} ms, median {mid:.2f} ms, "
        f"max {high:.2f} ms",
        rounds=rounds,
        min_ms=round(low, 3),
        median_ms=round(mid, 3),
        max_ms=round(high, 3),
    )


async def _layer_timeouts(target: Target, pooler: bool) -> tuple[str, str]:
    """statement_timeout in a single-statement session and in a transaction, on a
    connection the layer's own engine opens (so with its SET or SET LOCAL)."""
    assert target.url is not None
    settings = target.settings.model_copy(
        update={"db_pool_min": 0, "db_pool_max": 1, "db_serverless": False}
    )
    breaker = CircuitBreaker(settings.db_breaker_failures, settings.db_breaker_reset_s)
    engine = build_engine(target.url, target.driver, settings, pooler=pooler, breaker=breaker)
    show = "SELECT current_setting('statement_timeout')"
    try:
        async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            single = str((await conn.exec_driver_sql(show)).scalar_one())
        async with engine.begin() as conn:
            in_tx = str((await conn.exec_driver_sql(show)).scalar_one())
    finally:
        await engine.dispose()
    return single, in_tx


def _ms(value: str) -> int:
    """A statement_timeout as PostgreSQL shows it (`0`, `500ms`, `30s`, `2min`, `1h`) in ms."""
    units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit) and value[: -len(unit)].isdigit():
            return int(value[: -len(unit)]) * units[unit]
    return int(value) if value.isdigit() else -1


async def check_timeout(report: Report, target: Target, pooler: bool) -> None:
    want = round(target.settings.db_statement_timeout_s * 1000)
    single, in_tx = await _layer_timeouts(target, pooler)
    detail = (
        f"single statements see {single}, transactions see {in_tx} "
        f"(DB_STATEMENT_TIMEOUT_S={target.settings.db_statement_timeout_s:g}"
        # Seen as the layer will run once told about the pooler the probe found.
        + (", with DB_POOLER=transaction)" if pooler and not target.pooler else ")")
    )
    data = {"single_statement": single, "transaction": in_tx, "configured_ms": want}
    if not want:
        report.add(
            "statement_timeout",
            "ok",
            detail + ": off, statements may run as long as they like",
            data=data,
        )
    elif _ms(single) == want and _ms(in_tx) == want:
        report.add("statement_timeout", "ok", detail, data=data)
    elif pooler and _ms(in_tx) == want:
        report.add(
            "statement_timeout",
            "warn",
            detail + ": behind a pooler, single statements use the role's default",
            "run `neondb role-timeout` (sets this role's default in this database; the app "
            "tries at start-up too), or ALTER ROLE ... IN DATABASE ... SET statement_timeout",
            data=data,
        )
    else:
        report.add(
            "statement_timeout",
            "warn",
            detail,
            "the layer's SET did not stick: a transaction pooler the layer does not know "
            "about? (see the pooler step)",
            data=data,
        )


async def check_connections(
    report: Report, a: Probe, target: Target, pooler: bool, workers: int
) -> None:
    """DB_POOL_MAX × workers against what the server allows (behind a pooler: what applies)."""
    row = await a.row(
        "SELECT current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "coalesce(nullif(current_setting('reserved_connections', true), ''), '0')::int, "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"
    )
    limit, superuser, reserved_more, in_use = (int(v) for v in row)
    reserved = superuser + reserved_more  # PostgreSQL 16+ adds reserved_connections
    s = target.settings
    wanted = s.db_pool_max * workers
    data = {
        "max_connections": limit,
        "reserved": reserved,
        "in_use": in_use,
        "db_pool_max": s.db_pool_max,
        "workers": workers,
        "app_connections": wanted,
        "pooler": pooler,
    }
    server = f"max_connections {limit} ({reserved} reserved, {in_use} in use now)"
    app = f"DB_POOL_MAX {s.db_pool_max} × {workers} worker{'s' if workers != 1 else ''} = {wanted}"
    if s.db_serverless:
        app += " (DB_SERVERLESS: no pool kept, one connection per request in flight)"
    if pooler:
        detail = (
            f"{app} client connections to the pooler, which count against its client limit "
            f"(Neon: 10,000), not the server's {server}: the pooler opens at most its pool "
            "size per role and database"
        )
        report.add("max_connections", "ok", detail, data=data)
    elif wanted + reserved > limit:
        room = max(1, (limit - reserved) // workers)
        report.add(
            "max_connections",
            "warn",
            f"{app}, more than the server's {server} leaves",
            f"at full load the app would open {wanted} connections but the server allows "
            f"{limit - reserved} for ordinary roles: lower DB_POOL_MAX to {room} or fewer, "
            "use the pooler (Neon: the -pooler host), or raise max_connections (Neon: a "
            "larger compute)",
            data=data,
        )
    else:
        report.add("max_connections", "ok", f"{app}; server {server}", data=data)
