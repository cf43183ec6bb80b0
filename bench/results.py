"""A run's figures, the targets they are held to, and the report `bench/results/latest.md`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.wrk import WrkResult

__all__ = [
    "BASELINES",
    "Check",
    "Level",
    "Run",
    "TargetResult",
    "checks",
    "load_run",
    "report",
    "save_run",
    "target_rows",
]

# The baselines ratios are given against, in the order of the report's columns.
BASELINES = ("raw", "fastapi", "fastapi_noauth", "sqlalchemy", "guide")
COMPARED = ("todo_asyncpg", "todo_psycopg", "todo_asyncpg_pgb", "todo_psycopg_pgb", "neondb")
CEILING = "fastapi"


@dataclass
class Level:
    route: str
    clients: int
    wrk: WrkResult
    cpu_ms: float | None = None  # app CPU (utime + stime) per request


@dataclass
class TargetResult:
    key: str
    label: str
    todo_api: bool
    levels: list[Level] = field(default_factory=list)
    list_small: Level | None = None  # 200 tasks, 1 client
    list_big: Level | None = None  # 200,000 tasks, 1 client
    round_trips: dict[str, float] = field(default_factory=dict)
    delayed: dict[str, WrkResult] = field(default_factory=dict)  # with added latency, 1 client
    rss_peak_mb: float = 0.0

    def level(self, route: str, clients: int) -> Level | None:
        for lv in self.levels:
            if lv.route == route and lv.clients == clients:
                return lv
        return None


@dataclass
class Run:
    commit: str
    date: str
    machine: str
    postgres: str
    quick: bool
    seconds: int
    levels: list[int]
    one_way_delay_ms: float
    targets: list[TargetResult]
    duration_s: float = 0.0

    @property
    def rtt_ms(self) -> float:
        return 2 * self.one_way_delay_ms

    def target(self, key: str) -> TargetResult | None:
        return next((t for t in self.targets if t.key == key), None)


# JSON --------------------------------------------------------------------------------------


def save_run(run: Run, path: Path) -> None:
    path.write_text(json.dumps(asdict(run), indent=1) + "\n")


def _level(d: dict[str, Any] | None) -> Level | None:
    if d is None:
        return None
    return Level(d["route"], d["clients"], WrkResult(**d["wrk"]), d["cpu_ms"])


def load_run(path: Path) -> Run:
    d = json.loads(path.read_text())
    targets = []
    for t in d.pop("targets"):
        targets.append(
            TargetResult(
                key=t["key"],
                label=t["label"],
                todo_api=t["todo_api"],
                levels=[lv for lv in map(_level, t["levels"]) if lv is not None],
                list_small=_level(t["list_small"]),
                list_big=_level(t["list_big"]),
                round_trips=t["round_trips"],
                delayed={k: WrkResult(**v) for k, v in t["delayed"].items()},
                rss_peak_mb=t["rss_peak_mb"],
            )
        )
    return Run(targets=targets, **d)


# targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One target: what is measured against which bound. `met` is None when the run did
    not measure it (a QUICK run, or the app was left out)."""

    target: str
    app: str
    part: str  # the route, or "" when the target is one figure per app
    measured: float | None
    bound: float
    at_least: bool  # True: measured >= bound; False: measured <= bound
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.bound if self.at_least else self.measured <= self.bound

    @property
    def gap(self) -> float:
        """How far inside the bound (negative: outside), in the figure's unit."""
        if self.measured is None:
            return 0.0
        return self.measured - self.bound if self.at_least else self.bound - self.measured

    @property
    def distance(self) -> str:
        if self.measured is None:
            return "not measured"
        gap = self.gap
        word = "margin" if gap >= 0 else "short by"
        return f"{word} {abs(gap):.2f}{self.unit}"


def _rps(run: Run, key: str, route: str, clients: int) -> float | None:
    t = run.target(key)
    lv = t.level(route, clients) if t else None
    return lv.wrk.rps if lv else None


def ratio(run: Run, key: str, base: str, route: str, clients: int = 32) -> float | None:
    a, b = _rps(run, key, route, clients), _rps(run, base, route, clients)
    return a / b if a is not None and b else None


def checks(run: Run) -> list[Check]:
    out: list[Check] = []
    todo = [t for t in run.targets if t.todo_api]
    ceiling = run.target(CEILING)
    for t in todo:
        if t.key.endswith("_pgb"):
            continue  # a pooler hop is not the app's cost: its ratios are in the table only
        for route in ("get", "list", "create"):
            out.append(
                Check(
                    "todo_api ÷ FastAPI ceiling (auth), 32 clients, ≥ 0.6 (goal 0.8)",
                    t.label,
                    route,
                    ratio(run, t.key, CEILING, route),
                    0.6,
                    True,
                )
            )
    for base, bound in (("fastapi_noauth", 0.8), ("sqlalchemy", 1.5)):
        name = "FastAPI ceiling, no auth" if base == "fastapi_noauth" else "tuned SQLAlchemy"
        for route in ("get", "list", "create"):
            out.append(
                Check(
                    f"neondb alone ÷ {name}, 32 clients, ≥ {bound:g}",
                    "neondb alone",
                    route,
                    ratio(run, "neondb", base, route),
                    bound,
                    True,
                )
            )
    for t in todo:
        for route in ("get", "list", "create"):
            lv = t.level(route, 128)
            out.append(
                Check(
                    "128 clients: 0 errors",
                    t.label,
                    route,
                    float(lv.wrk.errors) if lv else None,
                    0,
                    False,
                )
            )
            ref = ceiling.level(route, 128) if ceiling else None
            out.append(
                Check(
                    "128 clients: p99 ≤ 1.5 × FastAPI ceiling's p99",
                    t.label,
                    route,
                    lv.wrk.p99_ms / ref.wrk.p99_ms if lv and ref and ref.wrk.p99_ms else None,
                    1.5,
                    False,
                    "×",
                )
            )
    for t in todo:
        for route in ("get", "list", "create"):
            out.append(
                Check(
                    "round trips per request = 1",
                    t.label,
                    route,
                    t.round_trips.get(route),
                    1.0,
                    False,
                )
            )
    for t in todo:
        for route in ("get", "list"):
            d = t.delayed.get(route)
            out.append(
                Check(
                    f"{run.one_way_delay_ms:g} ms added each way: p50 ≤ 1 RTT + 2 ms "
                    f"({run.rtt_ms + 2:g} ms)",
                    t.label,
                    route,
                    d.p50_ms if d else None,
                    run.rtt_ms + 2,
                    False,
                    " ms",
                )
            )
    for t in todo:
        small, big = t.list_small, t.list_big
        out.append(
            Check(
                "list p50 at 200,000 tasks ≤ 1.5 × p50 at 200",
                t.label,
                "",
                big.wrk.p50_ms / small.wrk.p50_ms if big and small and small.wrk.p50_ms else None,
                1.5,
                False,
                "×",
            )
        )
    for t in todo:
        lv = t.level("get", 32)
        out.append(
            Check(
                "app CPU per get ≤ 1.0 ms (32 clients)",
                t.label,
                "",
                lv.cpu_ms if lv else None,
                1.0,
                False,
                " ms",
            )
        )
    return out


def target_rows(found: list[Check]) -> list[list[str]]:
    """One row per target and app: each route's figure, met when all are, and the distance
    of the worst (or of the one figure)."""
    groups: dict[tuple[str, str], list[Check]] = {}
    for c in found:
        groups.setdefault((c.target, c.app), []).append(c)
    rows = []
    for (target, app), group in groups.items():
        measured = [c for c in group if c.met is not None]
        figures = ", ".join(
            (f"{c.part} " if c.part else "") + _f(c.measured, 2) + ("" if c.met else " ✗")
            for c in measured
        )
        if not measured:
            rows.append([target, app, "n/a", "not measured", ""])
            continue
        missed = [c for c in measured if not c.met]
        verdict = "met" if not missed else "**not met**"
        if len(measured) < len(group):
            verdict += " (part measured)"
        worst = (missed or measured)[0]
        if missed:
            worst = max(missed, key=lambda c: abs(c.gap))
        else:
            worst = min(measured, key=lambda c: c.gap)
        where = f"{worst.part}: " if worst.part and len(group) > 1 else ""
        rows.append([target, app, figures, verdict, where + worst.distance])
    return rows


# the report --------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


ANALYSIS = Path(__file__).resolve().parent / "analysis.md"
"""Why the targets still missed are missed, from the profiles: appended to the report."""


def report(run: Run, analysis: Path | None = ANALYSIS) -> str:
    routes = ("get", "list", "create")
    mode = "QUICK (32 clients, 1 s per figure)" if run.quick else "full"
    lines = [
        "# make bench: todo_api and neondb against their baselines",
        "",
        f"- commit `{run.commit}`, {run.date}, {mode} run, {run.duration_s:.0f} s",
        f"- machine: {run.machine}; PostgreSQL {run.postgres}",
        f"- load: wrk, {run.seconds} s per route and client count, after a warm-up; one "
        "uvicorn worker per app (uvloop, httptools), one app at a time",
        "- data: 20 users × 200 tasks, one user with 200,000; creates are made for other "
        "users and deleted after each app",
        "",
        "## Throughput (requests/s)",
        "",
    ]
    cols = [f"{r} @{n}" for r in routes for n in run.levels]
    rows = []
    for t in run.targets:
        cells = []
        for r in routes:
            for n in run.levels:
                lv = t.level(r, n)
                cells.append(_f(lv.wrk.rps, 0) if lv else "n/a")
        rows.append([t.label, *cells])
    lines += _table(["app", *cols], rows)

    present = [b for b in BASELINES if run.target(b)]
    compared = [k for k in COMPARED if run.target(k)]
    if present and compared and 32 in run.levels:
        lines += ["", "## Ratios to each baseline (requests/s, 32 clients)", ""]
        rows = []
        for k in compared:
            label = run.target(k).label  # type: ignore[union-attr]
            for r in routes:
                rows.append([label, r, *(_f(ratio(run, k, b, r), 2) for b in present)])
        labels = [run.target(b).label for b in present]  # type: ignore[union-attr]
        lines += _table(["app", "route", *(f"÷ {lbl}" for lbl in labels)], rows)

    top = max(run.levels)
    lines += ["", f"## Latency at {top} clients (p50 / p99 ms, errors)", ""]
    rows = []
    for t in run.targets:
        cells = []
        for r in routes:
            lv = t.level(r, top)
            cells.append(
                f"{lv.wrk.p50_ms:.1f} / {lv.wrk.p99_ms:.1f}, {lv.wrk.errors}" if lv else "n/a"
            )
        rows.append([t.label, *cells])
    lines += _table(["app", *routes], rows)

    lines += [
        "",
        f"## Round trips, and latency with {run.one_way_delay_ms:g} ms added each way "
        f"(RTT {run.rtt_ms:g} ms, 1 client)",
        "",
        "Round trips are counted by the FaultProxy (neondb.proxy) between the app and the "
        "database (or PgBouncer) over sequential warm requests; throughput above is measured "
        "without the proxy.",
        "",
    ]
    rows = []
    for t in run.targets:
        if not t.round_trips:
            continue
        rts = [_f(t.round_trips.get(r), 1) for r in routes]
        lat = []
        for r in ("get", "list"):
            d = t.delayed.get(r)
            lat.append(f"{d.p50_ms:.1f} ({d.p50_ms / run.rtt_ms:.2f} RTT)" if d else "n/a")
        rows.append([t.label, *rts, *lat])
    lines += _table(
        ["app", "round trips get", "list", "create", "get p50 ms (÷ RTT)", "list p50 ms (÷ RTT)"],
        rows,
    )

    mid = 32 if 32 in run.levels else top
    lines += ["", f"## Cost: app CPU per request at {mid} clients, memory", ""]
    rows = []
    for t in run.targets:
        cpu = [_f(lv.cpu_ms, 2) if (lv := t.level(r, mid)) else "n/a" for r in routes]
        rows.append([t.label, *cpu, _f(t.rss_peak_mb, 0)])
    lines += _table(["app", "CPU ms get", "list", "create", "peak RSS MB"], rows)

    lines += ["", "## List p50 by the user's number of tasks (1 client, limit 20)", ""]
    rows = []
    for t in run.targets:
        s, b = t.list_small, t.list_big
        if s is None or b is None:
            continue
        rows.append(
            [
                t.label,
                _f(s.wrk.p50_ms, 2),
                _f(b.wrk.p50_ms, 2),
                _f(b.wrk.p50_ms / s.wrk.p50_ms if s.wrk.p50_ms else None, 1),
            ]
        )
    lines += _table(["app", "200 tasks ms", "200,000 tasks ms", "ratio"], rows)

    lines += ["", "## Targets", ""]
    lines += _table(["target", "app", "measured", "", "distance"], target_rows(checks(run)))
    lines += [
        "",
        "Reproduce: `make bench` (full) or `make bench QUICK=1`; `BENCH_TARGETS`, "
        "`BENCH_LEVELS`, `BENCH_SECONDS`, `BENCH_DELAY_MS`, `BENCH_DATABASE_URL` narrow or "
        "change it (bench/plan.py).",
    ]
    if analysis is not None and analysis.is_file():
        # Written by hand from profiles of an earlier run: its own figures, not this run's.
        lines += ["", analysis.read_text().rstrip()]
    return "\n".join(lines) + "\n"
