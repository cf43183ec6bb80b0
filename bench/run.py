"""`make bench`: todo_api and neondb side by side with their baselines, measured in one run.

Each app runs alone under one uvicorn worker against the same PostgreSQL and data; wrk
drives get, list and create at each client count; a FaultProxy counts round trips and adds
latency in a separate, short phase (the proxy costs CPU, so throughput is measured without
it). Results: bench/results/latest.md (tables, ratios, targets met or not), latest.png and
latest.json. `QUICK=1` for a run under 2 minutes; see bench/plan.py for the other knobs.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import wrk
from bench.plan import ROUTES, Plan, TargetSpec, make_plan
from bench.plot import plot
from bench.results import Level, Run, TargetResult, report, save_run
from bench.servers import AppServer, DataSet, PgBouncer, Upstream, delete_writes, load_data
from neondb.proxy import FaultProxy
from todo_api.auth import issue_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-not-for-production-0123456789"
CREATE_BODY = json.dumps({"title": "bench task", "priority": "high", "tags": ["bench"]})
REQUESTS_PER_FILE = 2000


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def commit() -> str:
    """The commit measured, `+dirty` when tracked files differ from it."""
    try:
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    model = "unknown CPU"
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
        load = f", load average {os.getloadavg()[0]:.1f} at the start"
    except OSError:
        load = ""
    return (
        f"{os.cpu_count()} cores ({model}){memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}{load}"
    )


class Workload:
    """The requests each route replays (the same for every app), and their Lua files."""

    def __init__(self, data: DataSet, folder: Path) -> None:
        rng = random.Random(20260101)
        everyone = [*data.users, data.big_user, *data.writers]
        tokens = {u: issue_token(SECRET, u, ttl_s=6 * 3600) for u in everyone}
        picks = [data.ids[rng.randrange(len(data.ids))] for _ in range(REQUESTS_PER_FILE)]
        self.requests: dict[str, list[wrk.Request]] = {
            "get": [wrk.Request("GET", f"/api/tasks/{i}", tokens[u], u) for u, i in picks],
            "list": [
                wrk.Request("GET", "/api/tasks?limit=20", tokens[u], u)
                for u in (rng.choice(data.users) for _ in range(REQUESTS_PER_FILE))
            ],
            "create": [
                wrk.Request("POST", "/api/tasks", tokens[w], w, CREATE_BODY)
                for w in (rng.choice(data.writers) for _ in range(REQUESTS_PER_FILE))
            ],
            "list_big": [
                wrk.Request("GET", "/api/tasks?limit=20", tokens[data.big_user], data.big_user)
            ],
        }
        # The warm-up: the three routes interleaved, so one short run warms them all.
        mixed = zip(*(self.requests[r] for r in ROUTES), strict=True)
        self.requests["mixed"] = [r for trio in mixed for r in trio]
        self.files = {k: wrk.requests_file(v, folder) for k, v in self.requests.items()}
        first = self.requests["list"][0]
        self.ready_headers = {"Authorization": f"Bearer {first.token}", "X-User": first.user}


def app_env(spec: TargetSpec, url: str, direct_url: str) -> dict[str, str]:
    """The app's environment: the machine's, less any database or app setting a developer
    may have exported (each app runs with its own defaults), plus its database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "DB_", "APP_", "AUTH_", "BENCH_"))
    }
    if spec.is_todo_api:
        # `todo-api serve` as deployed: production (no access log line per request), one
        # worker (production's default is one per core), its own pool and driver defaults.
        env |= {"DATABASE_URL": url, "AUTH_SECRET": SECRET, "APP_ENV": "production"}
        env["DB_DRIVER"] = spec.driver
        if spec.pooler:
            env |= {"DB_POOLER": "transaction", "DATABASE_DIRECT_URL": direct_url}
    elif spec.key == "neondb":
        env["DATABASE_URL"] = url
    else:
        env |= {"BENCH_DSN": url, "BENCH_AUTH_SECRET": SECRET, "BENCH_POOL_SIZE": "20"}
    return env | dict(spec.env)


def measure_load(
    spec: TargetSpec,
    plan: Plan,
    url: str,
    direct_url: str,
    work: Workload,
    tmp: Path,
    result: TargetResult,
) -> None:
    server = AppServer.start(spec.app, app_env(spec, url, direct_url), tmp)
    try:
        server.wait_ready(work.ready_headers)
        wrk.run(server.base_url, work.files["mixed"], 32, plan.warmup_seconds)
        for route in ROUTES:
            for clients in plan.levels:
                before = server.cpu_s()
                res = wrk.run(server.base_url, work.files[route], clients, plan.seconds)
                cpu = (server.cpu_s() - before) * 1000 / res.requests if res.requests else None
                result.levels.append(Level(route, clients, res, cpu))
                print(
                    f"    {route:6} {clients:4} clients: {res.rps:7.0f} req/s  "
                    f"p50 {res.p50_ms:6.1f}  p99 {res.p99_ms:6.1f} ms  errors {res.errors}  "
                    f"cpu {cpu or 0:.2f} ms/req",
                    flush=True,
                )
        if spec.key in plan.sized:
            for attr, name in (("list_small", "list"), ("list_big", "list_big")):
                res = wrk.run(server.base_url, work.files[name], 1, plan.size_seconds)
                setattr(result, attr, Level(name, 1, res))
                print(f"    {name:8} 1 client: p50 {res.p50_ms:.2f} ms", flush=True)
        result.rss_peak_mb = server.memory_mb()[0]
    finally:
        server.stop()


def measure_proxied(
    spec: TargetSpec,
    plan: Plan,
    upstream: Upstream,
    bouncer: PgBouncer | None,
    work: Workload,
    tmp: Path,
    result: TargetResult,
) -> None:
    host, port = ("127.0.0.1", bouncer.port) if bouncer and spec.pooler else upstream.host_port
    with FaultProxy(host, port) as proxy:
        env = app_env(spec, upstream.via(proxy.port), upstream.url)
        server = AppServer.start(spec.app, env, tmp)
        try:
            server.wait_ready(work.ready_headers)
            with httpx.Client(base_url=server.base_url, timeout=30) as client:

                def send(r: wrk.Request) -> None:
                    headers = {"Authorization": f"Bearer {r.token}", "X-User": r.user}
                    if r.body is not None:
                        headers["Content-Type"] = "application/json"
                    response = client.request(r.method, r.path, headers=headers, content=r.body)
                    response.raise_for_status()

                for route in ROUTES:  # warm: statements prepared, connection in use
                    for r in work.requests[route][:3]:
                        send(r)
                n = plan.count_requests
                for route in ROUTES:
                    proxy.reset_counts()
                    for r in work.requests[route][3 : 3 + n]:
                        send(r)
                    result.round_trips[route] = proxy.round_trips / n
            proxy.delay_s = plan.one_way_delay_ms / 1000
            for route in ("get", "list"):
                result.delayed[route] = wrk.run(
                    server.base_url, work.files[route], 1, plan.delay_seconds
                )
            rt = result.round_trips
            print(
                f"    round trips get {rt['get']:.1f} list {rt['list']:.1f} "
                f"create {rt['create']:.1f}; +{plan.rtt_ms:g} ms RTT: "
                f"get p50 {result.delayed['get'].p50_ms:.1f} ms, "
                f"list p50 {result.delayed['list'].p50_ms:.1f} ms",
                flush=True,
            )
        finally:
            server.stop()


def main() -> None:
    plan = make_plan(os.environ)
    started = time.monotonic()
    measured = commit()  # before the run: what the figures belong to
    mode = "QUICK" if plan.quick else "full"
    print(
        f"==> make bench ({mode}): {len(plan.targets)} apps, clients {plan.levels}, "
        f"{plan.seconds} s per figure, about {plan.estimate_s() / 60:.1f} min",
        flush=True,
    )
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: run `make system-deps` (Debian package wrk)")
    upstream = Upstream.open()
    tmp = Path(tempfile.mkdtemp(prefix="neondb-bench-"))
    bouncer: PgBouncer | None = None
    try:
        upstream.create()
        print("==> loading data (todo-api db upgrade, then generate_series)", flush=True)
        data = load_data(upstream)
        work = Workload(data, tmp)
        if any(t.pooler for t in plan.targets):
            bouncer = PgBouncer.start(upstream)
        results = []
        for spec in plan.targets:
            print(f"==> {spec.label}", flush=True)
            result = TargetResult(spec.key, spec.label, spec.is_todo_api)
            url = upstream.via(bouncer.port) if spec.pooler and bouncer else upstream.url
            measure_load(spec, plan, url, upstream.url, work, tmp, result)
            if spec.key in plan.proxied:
                measure_proxied(spec, plan, upstream, bouncer, work, tmp, result)
            delete_writes(upstream)
            results.append(result)
        run = Run(
            commit=measured,
            date=f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            machine=machine(),
            postgres=upstream.server_version(),
            quick=plan.quick,
            seconds=plan.seconds,
            levels=list(plan.levels),
            one_way_delay_ms=plan.one_way_delay_ms,
            targets=results,
            duration_s=time.monotonic() - started,
        )
    finally:
        if bouncer is not None:
            bouncer.stop()
        upstream.close()
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = report(run)
    (RESULTS / "latest.md").write_text(text)
    save_run(run, RESULTS / "latest.json")
    plot(run, RESULTS / "latest.png")
    print(text)
    print(f"written: {RESULTS / 'latest.md'}, latest.png, latest.json ({run.duration_s:.0f} s)")


if __name__ == "__main__":
    main()
