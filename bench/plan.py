"""What one `make bench` run measures: the apps, routes, client counts and durations.

`QUICK=1` keeps every app (so every ratio still has its baseline) but measures 32 clients
only, for one second per figure, runs the proxied phases (round trips, added latency) for
todo_api's variants only and the 200,000-task list for its direct ones: under 2 minutes
instead of about 12.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

__all__ = ["ROUTES", "Plan", "TargetSpec", "make_plan"]

ROUTES = ("get", "list", "create")


@dataclass(frozen=True)
class TargetSpec:
    """One app as the bench starts it."""

    key: str
    label: str
    app: str | None  # uvicorn factory of a baseline; None: todo_api via `todo-api serve`
    driver: str = "asyncpg"
    pooler: bool = False  # through the local PgBouncer (transaction mode)
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_todo_api(self) -> bool:
        return self.app is None


TARGETS = (
    TargetSpec("raw", "raw ceiling: Starlette + asyncpg", "bench.baselines.raw_starlette"),
    TargetSpec(
        "fastapi", "FastAPI ceiling: asyncpg + pydantic + JWT", "bench.baselines.fastapi_asyncpg"
    ),
    TargetSpec(
        "fastapi_noauth",
        "FastAPI ceiling, no auth",
        "bench.baselines.fastapi_asyncpg",
        env={"BENCH_AUTH": "0"},
    ),
    TargetSpec("sqlalchemy", "tuned SQLAlchemy ORM", "bench.baselines.sqlalchemy_tuned"),
    TargetSpec("guide", "guide pattern (SQLAlchemy ORM)", "bench.baselines.guide"),
    TargetSpec("neondb", "neondb alone (asyncpg)", "bench.baselines.neondb_alone"),
    TargetSpec("todo_asyncpg", "todo_api, asyncpg", None, "asyncpg"),
    TargetSpec("todo_psycopg", "todo_api, psycopg", None, "psycopg"),
    TargetSpec("todo_asyncpg_pgb", "todo_api, asyncpg, PgBouncer", None, "asyncpg", pooler=True),
    TargetSpec("todo_psycopg_pgb", "todo_api, psycopg, PgBouncer", None, "psycopg", pooler=True),
)


@dataclass(frozen=True)
class Plan:
    quick: bool
    targets: tuple[TargetSpec, ...]
    levels: tuple[int, ...]  # concurrent clients
    seconds: int  # per route and level (wrk takes whole seconds)
    warmup_seconds: int  # the three routes interleaved, before the first level
    size_seconds: int  # list at 200 and at 200,000 tasks, 1 client
    count_requests: int  # sequential requests per route whose round trips are counted
    delay_seconds: int  # get and list at 1 client with the added latency
    one_way_delay_ms: float  # added by the FaultProxy in each direction
    proxied: frozenset[str]  # targets measured through the FaultProxy
    sized: frozenset[str]  # targets whose list is measured at 200,000 tasks

    @property
    def rtt_ms(self) -> float:
        return 2 * self.one_way_delay_ms

    def estimate_s(self) -> float:
        """Rough duration, start-ups included (about 3 s each on the 2-core machine)."""
        start = 2.5
        load = self.warmup_seconds + len(ROUTES) * len(self.levels) * self.seconds
        total = len(self.targets) * (start + load)
        total += len(self.sized) * 2 * self.size_seconds
        total += len(self.proxied) * (start + 2 * self.delay_seconds + 1)
        return total + 15  # data load, PgBouncer


def make_plan(env: Mapping[str, str]) -> Plan:
    """The plan for this environment: `QUICK`, and `BENCH_TARGETS` (keys, comma-separated),
    `BENCH_LEVELS`, `BENCH_SECONDS`, `BENCH_DELAY_MS` to narrow or change it."""
    quick = env.get("QUICK", "").strip().lower() not in ("", "0", "false", "no")
    targets: tuple[TargetSpec, ...] = TARGETS
    if env.get("BENCH_TARGETS"):
        wanted = {k.strip() for k in env["BENCH_TARGETS"].split(",")}
        unknown = wanted - {t.key for t in TARGETS}
        if unknown:
            raise ValueError(f"BENCH_TARGETS: unknown {sorted(unknown)}; known {_keys()}")
        targets = tuple(t for t in TARGETS if t.key in wanted)
    todo = frozenset(t.key for t in targets if t.is_todo_api)
    every = frozenset(t.key for t in targets)
    if quick:
        plan = Plan(
            quick=True,
            targets=targets,
            levels=(32,),
            seconds=1,
            warmup_seconds=1,
            size_seconds=1,
            count_requests=5,
            delay_seconds=1,
            one_way_delay_ms=5.0,
            proxied=todo,
            sized=frozenset(t.key for t in targets if t.is_todo_api and not t.pooler),
        )
    else:
        plan = Plan(
            quick=False,
            targets=targets,
            levels=(1, 32, 128),
            seconds=4,
            warmup_seconds=2,
            size_seconds=3,
            count_requests=20,
            delay_seconds=3,
            one_way_delay_ms=5.0,
            proxied=every,
            sized=every,
        )
    if env.get("BENCH_LEVELS"):
        plan = replace(plan, levels=tuple(int(x) for x in env["BENCH_LEVELS"].split(",")))
    if env.get("BENCH_SECONDS"):
        plan = replace(plan, seconds=max(1, int(env["BENCH_SECONDS"])))
    if env.get("BENCH_DELAY_MS"):
        plan = replace(plan, one_way_delay_ms=float(env["BENCH_DELAY_MS"]))
    return plan


def _keys() -> str:
    return ", ".join(t.key for t in TARGETS)
