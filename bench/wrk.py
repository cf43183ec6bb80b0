"""Driving wrk: the requests it replays, one run, and its figures.

wrk (C, epoll) takes a fraction of the CPU a Python load generator would, which matters on a
2-core machine where the server under test needs one of them. bench/load.lua replays a list
of prepared requests and prints the run as one `WRK_JSON {...}` line (exact percentiles from
wrk's histogram, and every error count), which `parse` reads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LUA_SCRIPT", "Request", "WrkResult", "parse", "requests_file", "run"]

LUA_SCRIPT = Path(__file__).resolve().parent / "load.lua"
MARKER = "WRK_JSON "


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    token: str
    user: str
    body: str | None = None


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    non_2xx: int  # wrk's "Non-2xx or 3xx responses": status 400 and above
    socket_errors: int  # connect, read, write and timeout errors

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def parse(stdout: str) -> WrkResult:
    """The figures of one run, from wrk's output (the line bench/load.lua's `done()` prints).
    ValueError when the line is missing (wrk failed, or ran another script)."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            d = json.loads(line[len(MARKER) :])
            return WrkResult(
                requests=int(d["requests"]),
                seconds=d["duration_us"] / 1e6,
                p50_ms=d["p50_us"] / 1000,
                p90_ms=d["p90_us"] / 1000,
                p99_ms=d["p99_us"] / 1000,
                max_ms=d["max_us"] / 1000,
                mean_ms=d["mean_us"] / 1000,
                non_2xx=int(d["status"]),
                socket_errors=int(d["connect"] + d["read"] + d["write"] + d["timeout"]),
            )
    raise ValueError(f"no {MARKER.strip()} line in wrk's output:\n{stdout[-2000:]}")


def _lua_string(text: str) -> str:
    # Long brackets take any text verbatim, as long as the closing bracket is not in it.
    level = "="
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


def requests_file(requests: Sequence[Request], folder: Path) -> Path:
    """A Lua file returning the requests, for bench/load.lua."""
    rows = []
    for r in requests:
        body = _lua_string(r.body) if r.body is not None else "nil"
        fields = [_lua_string(r.method), _lua_string(r.path), body]
        rows.append("{" + ", ".join([*fields, _lua_string(r.token), _lua_string(r.user)]) + "}")
    path = Path(tempfile.mkstemp(prefix="bench-requests-", suffix=".lua", dir=folder)[1])
    path.write_text("return {\n" + ",\n".join(rows) + "\n}\n")
    return path


def run(base_url: str, requests_path: Path, clients: int, seconds: int) -> WrkResult:
    """`clients` keep-alive connections on one wrk thread for `seconds` (wrk takes whole
    seconds)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: run `make system-deps` (Debian package wrk)")
    cmd = [
        wrk,
        "-t1",
        f"-c{clients}",
        f"-d{max(1, seconds)}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        base_url,
        "--",
        str(requests_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse(done.stdout)
