"""What the bench starts: the database (and its data), PgBouncer, and each app under test.

One PostgreSQL for every app: `BENCH_DATABASE_URL`, else `DATABASE_URL`, else the embedded
server in `.neondb/`. The bench makes a database of its own on it, creates the schema with
todo_api's migrations (`todo-api db upgrade`, so a new migration is picked up) and loads the
data once with `INSERT ... SELECT generate_series`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from neondb import EmbeddedServer, parse_url
from neondb.testing import admin_execute

__all__ = [
    "BENCH_DB",
    "AppServer",
    "DataSet",
    "PgBouncer",
    "Upstream",
    "free_port",
    "load_data",
    "open_upstream",
]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BENCH_DB = "neondb_bench"
SMALL_USERS = tuple(f"user-{i:02d}" for i in range(20))
TASKS_PER_USER = 200
BIG_USER = "big"
BIG_TASKS = 200_000
WRITERS = tuple(f"writer-{i:02d}" for i in range(20))  # creates go here: lists stay at 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Upstream:
    """The PostgreSQL server, and the bench's database on it."""

    admin_url: str
    embedded: EmbeddedServer | None

    @classmethod
    def open(cls) -> Upstream:
        raw = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
        if raw:
            return cls(raw, None)
        server = EmbeddedServer(ROOT / ".neondb")
        return cls(server.start(), server)

    @property
    def url(self) -> str:
        """The bench database, as the server is reached directly."""
        return parse_url(self.admin_url).url.set(database=BENCH_DB).render_as_string(False)

    @property
    def host_port(self) -> tuple[str, int]:
        """(host or Unix socket folder, port), for the FaultProxy and PgBouncer."""
        parsed = parse_url(self.admin_url)
        return parsed.host, parsed.url.port or int(parsed.param("port") or 5432)

    @property
    def user_password(self) -> tuple[str, str | None]:
        u = parse_url(self.admin_url).url
        return u.username or "postgres", u.password

    def via(self, port: int) -> str:
        """The bench database through a local TCP port (the FaultProxy or PgBouncer)."""
        u = parse_url(self.url).url
        u = u.difference_update_query(["host", "port"]).set(host="127.0.0.1", port=port)
        return u.render_as_string(hide_password=False)

    def server_version(self) -> str:
        return str(admin_execute(self.admin_url, "SHOW server_version")[0][0])

    def create(self) -> None:
        self.drop()
        admin_execute(self.admin_url, f'CREATE DATABASE "{BENCH_DB}"')

    def drop(self) -> None:
        admin_execute(self.admin_url, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')

    def close(self) -> None:
        try:
            self.drop()
        finally:
            if self.embedded is not None:
                self.embedded.stop()


def open_upstream() -> Upstream:
    return Upstream.open()


@dataclass(frozen=True)
class DataSet:
    """What the load generator asks for: the users with 200 tasks and their task ids, the
    user with 200,000, and the users creates are made for."""

    users: tuple[str, ...]
    ids: tuple[tuple[str, int], ...]  # (user, task id) of the small users' tasks
    big_user: str
    writers: tuple[str, ...]


def load_data(upstream: Upstream) -> DataSet:
    """Schema by todo_api's migrations, then 20 users × 200 tasks and one user with
    200,000, newest first by created_at a second apart."""
    env = {**os.environ, "DATABASE_URL": upstream.url}
    env.pop("DATABASE_DIRECT_URL", None)
    done = subprocess.run(
        [str(BIN / "todo-api"), "db", "upgrade"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"todo-api db upgrade failed: {done.stderr.strip()}")
    insert = (
        "INSERT INTO tasks (user_id, title, description, priority, tags, created_at, updated_at) "
        "SELECT {user}, 'task ' || g, 'description of task ' || g, "
        "(ARRAY['low', 'medium', 'high'])[1 + g % 3], ARRAY['tag' || (g % 5)], "
        "timestamptz '2026-01-01 00:00:00+00' - g * interval '1 second', "
        "timestamptz '2026-01-01 00:00:00+00' - g * interval '1 second' "
        "FROM generate_series(0, {n} - 1) AS g"
    )
    n_small = len(SMALL_USERS)
    small_user = f"'user-' || lpad((g % {n_small})::text, 2, '0')"
    admin_execute(upstream.url, insert.format(user=small_user, n=n_small * TASKS_PER_USER))
    admin_execute(upstream.url, insert.format(user=f"'{BIG_USER}'", n=BIG_TASKS))
    admin_execute(upstream.url, "VACUUM ANALYZE tasks")
    rows = admin_execute(
        upstream.url, "SELECT user_id, id FROM tasks WHERE user_id LIKE 'user-%' ORDER BY id"
    )
    return DataSet(SMALL_USERS, tuple((str(u), int(i)) for u, i in rows), BIG_USER, WRITERS)


def delete_writes(upstream: Upstream) -> None:
    """Drop the tasks creates made, so every app meets the same table."""
    admin_execute(upstream.url, "DELETE FROM tasks WHERE user_id LIKE 'writer-%'")


# PgBouncer -------------------------------------------------------------------------------


@dataclass
class PgBouncer:
    """PgBouncer in transaction mode on a free loopback port, in front of the upstream (TCP or
    its Unix socket folder). As root it runs as the owner of that folder (the embedded
    server's), or as `postgres`: PgBouncer refuses to run as root."""

    port: int
    base: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, upstream: Upstream, pool_size: int = 20) -> PgBouncer:
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        host, up_port = upstream.host_port
        user, password = upstream.user_password
        base = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
        port = free_port()
        (base / "userlist.txt").write_text(f'"{user}" ""\n')
        target = f"host={host} port={up_port} user={user}"
        if password:
            target += f" password={password}"
        ini = base / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = {target}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {base / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 400\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {base / 'pgbouncer.log'}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        ini.chmod(0o600)  # it may hold the upstream's password
        run_as: dict[str, str] = {}
        if os.geteuid() == 0:
            owner = "postgres"
            if host.startswith("/"):
                owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name
            entry = pwd.getpwnam(owner)
            for p in [base, *base.iterdir()]:
                os.chown(p, entry.pw_uid, entry.pw_gid)
            run_as = {"user": owner}
        with (base / "stderr.log").open("wb") as stderr:
            process = subprocess.Popen(
                [exe, "--quiet", str(ini)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                **run_as,  # type: ignore[call-overload]
            )
        bouncer = cls(port, base, process)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return bouncer
            time.sleep(0.05)
        bouncer.stop()
        log = (base / "pgbouncer.log").read_text(errors="replace") if base.exists() else ""
        raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)


# the app under test ----------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class AppServer:
    """One app in one uvicorn process (uvloop, httptools), on a free loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, app: str | None, env: dict[str, str], log_dir: Path) -> AppServer:
        """`app`: a uvicorn factory (`module`, whose `create_app` is used); None:
        todo_api exactly as `todo-api serve` starts it."""
        port = free_port()
        if app is None:
            cmd = [str(BIN / "todo-api"), "serve", "--port", str(port), "--workers", "1"]
        else:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                f"{app}:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        log = Path(tempfile.mkstemp(prefix="server-", suffix=".log", dir=log_dir)[1])
        with log.open("wb") as out:
            process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        return cls(process, port, log)

    def wait_ready(self, headers: dict[str, str], timeout_s: float = 60) -> None:
        """Until a list answers 200 (the pool is up and the schema is there)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=10) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.process.returncode}:\n{self.tail()}"
                    )
                try:
                    r = client.get("/api/tasks", params={"limit": 1})
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code} {r.text[:300]}"
                except httpx.HTTPError as e:
                    last = type(e).__name__
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout_s:g} s ({last}):\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def cpu_s(self) -> float:
        """utime + stime of the server process so far."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def memory_mb(self) -> tuple[float, float]:
        """(peak RSS, current RSS) in MB."""
        values: dict[str, float] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) / 1024
        return values.get("VmHWM", 0.0), values.get("VmRSS", 0.0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
