"""`make bench`: round trips per request and latency under load, todo_api vs the guide pattern.

Both apps run under uvicorn (one process each, in turn) against the same PostgreSQL (the
embedded server, or DATABASE_URL) through a FaultProxy that adds BENCH_RTT_MS of network
round-trip time (default 4 ms, a same-region Neon hop) and counts round trips. Results go to
bench/results/latest.md (table, commit, machine) and bench/results/latest.png.

Environment: BENCH_RTT_MS, BENCH_SECONDS (per load level, default 5), BENCH_LEVELS
(concurrency levels, default "1,16,64"), BENCH_TARGETS ("todo_api", "guide"), DB_DRIVER and
DB_POOL_MAX (todo_api's driver and pool).
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from neondb import EmbeddedServer, parse_url
from neondb.proxy import FaultProxy
from neondb.testing import admin_execute

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-not-for-production-0123456789"
BENCH_DB = "neondb_bench"


@dataclass
class Level:
    concurrency: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Target:
    name: str
    factory: str
    env: dict[str, str]
    reads_rt: float = 0.0
    creates_rt: float = 0.0
    levels: list[Level] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def upstream() -> tuple[str, int, str, EmbeddedServer | None]:
    """(host or socket folder, port, admin URL, embedded server to stop)."""
    raw = os.environ.get("DATABASE_URL")
    if raw:
        url = parse_url(raw)
        return url.host, url.url.port or 5432, raw, None
    server = EmbeddedServer(ROOT / ".neondb")
    admin = server.start()
    url = parse_url(admin)
    return url.host, int(url.param("port") or 5432), admin, server


async def wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if (await client.get("/openapi.json")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not become ready in 30 s")


async def measure(target: Target, proxy: FaultProxy, seconds: float, levels: list[int]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **target.env}
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            target.factory,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        cwd=ROOT,
    )
    try:
        await wait_ready(base, proc)
        token = target.env.get("BENCH_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            ids = []
            for i in range(3):  # warm the pool and statement caches
                r = await client.post("/api/tasks", json={"title": f"warm {i}"})
                r.raise_for_status()
                ids.append(r.json()["id"])
                (await client.get(f"/api/tasks/{ids[-1]}")).raise_for_status()
            n = 20
            proxy.reset_counts()
            for i in range(n):
                r = await client.post("/api/tasks", json={"title": f"count {i}"})
                ids.append(r.json()["id"])
            target.creates_rt = proxy.round_trips / n
            proxy.reset_counts()
            for i in range(n):
                await client.get(f"/api/tasks/{ids[i]}")
            target.reads_rt = proxy.round_trips / n
        for c in levels:
            target.levels.append(await load(base, headers, ids, c, seconds))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def load(
    base: str, headers: dict[str, str], ids: list[int], concurrency: int, seconds: float
) -> Level:
    """`concurrency` clients, each with its own keep-alive connection, for `seconds`.

    One httpx client per worker: a single shared client's pool rescans every connection
    for every request (quadratic), and at 64 clients that, not the server, set the pace."""
    level = Level(concurrency)
    rng = random.Random(concurrency)
    clients = [
        httpx.AsyncClient(base_url=base, headers=headers, timeout=30) for _ in range(concurrency)
    ]
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        client = clients[w]
        i = 0
        while time.monotonic() < deadline:
            i += 1
            started = time.perf_counter()
            try:
                if rng.random() < 0.2:
                    r = await client.post("/api/tasks", json={"title": f"load {w}-{i}"})
                else:
                    r = await client.get(f"/api/tasks/{rng.choice(ids)}")
                ok = r.status_code < 400
            except httpx.HTTPError:
                ok = False
            level.latencies_ms.append((time.perf_counter() - started) * 1000)
            level.requests += 1
            level.errors += 0 if ok else 1

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        for client in clients:
            await client.aclose()
    level.seconds = time.monotonic() - started
    return level


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


def report(targets: list[Target], rtt_ms: float, seconds: float) -> str:
    lines = [
        "# Benchmark: todo_api (neondb) vs the guide pattern",
        "",
        f"- commit `{commit()}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- injected network round-trip time: {rtt_ms:g} ms (FaultProxy), {seconds:g} s per level",
        "- workload: 80 % GET /api/tasks/{id}, 20 % POST /api/tasks; one uvicorn worker",
        "",
        "| app | round trips per read | per create | clients | req/s | p50 ms | p95 ms | p99 ms "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        for lv in t.levels:
            rps = lv.requests / lv.seconds if lv.seconds else 0
            lines.append(
                f"| {t.name} | {t.reads_rt:.1f} | {t.creates_rt:.1f} | {lv.concurrency} "
                f"| {rps:.0f} "
                f"| {lv.pct(50):.1f} | {lv.pct(95):.1f} | {lv.pct(99):.1f} | {lv.errors} |"
            )
    lines += ["", "Reproduce: `make bench` (BENCH_RTT_MS, BENCH_SECONDS, BENCH_LEVELS)."]
    return "\n".join(lines) + "\n"


def plot(targets: list[Target], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for t, color in zip(targets, ("tab:blue", "tab:red", "tab:green"), strict=False):
        xs = [lv.concurrency for lv in t.levels]
        ax.plot(xs, [lv.pct(50) for lv in t.levels], marker="o", color=color, label=f"{t.name} p50")
        ax.plot(
            xs,
            [lv.pct(99) for lv in t.levels],
            marker="x",
            linestyle="--",
            color=color,
            label=f"{t.name} p99",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency (ms)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main() -> None:
    rtt_ms = float(os.environ.get("BENCH_RTT_MS", "4"))
    seconds = float(os.environ.get("BENCH_SECONDS", "5"))
    levels = [int(x) for x in os.environ.get("BENCH_LEVELS", "1,16,64").split(",")]
    host, port, admin, server = upstream()
    try:
        admin_execute(admin, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        admin_execute(admin, f'CREATE DATABASE "{BENCH_DB}"')
        with FaultProxy(host, port) as proxy:
            proxy.delay_s = rtt_ms / 2000  # one way
            url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{BENCH_DB}"
            from todo_api.auth import issue_token

            token = issue_token(SECRET, "bench")
            targets = [
                Target(
                    "todo_api (neondb)",
                    "todo_api.app:create_app",
                    {
                        "DATABASE_URL": url,
                        "AUTH_SECRET": SECRET,
                        "BENCH_TOKEN": token,
                        "DB_POOL_MIN": "5",
                        "DB_POOL_MAX": os.environ.get("DB_POOL_MAX", "20"),
                    },
                ),
                Target(
                    "guide pattern",
                    "bench.baseline_app:create_app",
                    {
                        "BASELINE_DATABASE_URL": url.replace(
                            "postgresql://", "postgresql+asyncpg://"
                        )
                    },
                ),
            ]
            only = os.environ.get("BENCH_TARGETS")
            if only:  # e.g. "todo_api" or "guide": a substring of the target's name
                targets = [t for t in targets if any(o in t.name for o in only.split(","))]
            for t in targets:
                print(f"measuring {t.name} ...", flush=True)
                await measure(t, proxy, seconds, levels)
        RESULTS.mkdir(parents=True, exist_ok=True)
        text = report(targets, rtt_ms, seconds)
        (RESULTS / "latest.md").write_text(text)
        plot(targets, RESULTS / "latest.png")
        print(text)
        print(f"written: {RESULTS / 'latest.md'}, {RESULTS / 'latest.png'}")
    finally:
        admin_execute(admin, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        if server is not None:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
