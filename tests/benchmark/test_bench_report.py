"""The bench's plumbing, without timing anything: wrk's output parsed, the Lua script sending
what it was given, the report and its targets computed from given figures, QUICK's plan."""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from bench import wrk
from bench.plan import make_plan
from bench.plot import plot
from bench.results import Level, Run, TargetResult, checks, load_run, report, save_run
from bench.wrk import WrkResult

WRK_STDOUT = """Running 1s test @ http://127.0.0.1:8000
  1 threads and 4 connections
  940 requests in 1.00s, 2.44MB read
  Non-2xx or 3xx responses: 472
WRK_JSON {"requests":940,"duration_us":2000000,"bytes":2563584,"connect":1,"read":2,"write":3,\
"status":472,"timeout":4,"p50_us":4277,"p90_us":8840,"p99_us":11689,"max_us":18545,\
"mean_us":4352.2}
Requests/sec:    939.51
"""


def test_parse_reads_the_done_line() -> None:
    r = wrk.parse(WRK_STDOUT)
    assert (r.requests, r.seconds, r.rps) == (940, 2.0, 470.0)
    assert (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms) == (4.277, 8.84, 11.689, 18.545)
    assert (r.non_2xx, r.socket_errors, r.errors) == (472, 10, 482)


def test_parse_without_the_line_says_so() -> None:
    with pytest.raises(ValueError, match="no WRK_JSON line"):
        wrk.parse("Running 1s test\nunable to connect to 127.0.0.1:1\n")


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None, str | None, bytes]] = []  # noqa: RUF012

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append(
            (
                self.command,
                self.path,
                self.headers.get("Authorization"),
                self.headers.get("X-User"),
                body,
            )
        )
        status = 404 if self.path == "/missing" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (.ci/system-deps)")
def test_lua_script_sends_the_requests_and_counts_non_2xx(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    try:
        requests = [
            wrk.Request("GET", "/api/tasks/7", "tok-a", "user-a"),
            wrk.Request("POST", "/api/tasks", "tok-b", "user-b", '{"title": "x]]y"}'),
            wrk.Request("GET", "/missing", "tok-c", "user-c"),
        ]
        path = wrk.requests_file(requests, tmp_path)
        result = wrk.run(f"http://127.0.0.1:{server.server_address[1]}", path, 1, 1)
    finally:
        server.shutdown()
        server.server_close()
    seen = list(_Recorder.seen)
    assert result.requests >= 3
    assert result.socket_errors == 0
    # One connection, in order; the server may have seen one more request than wrk counted
    # (in flight when the time was up).
    assert len(seen) - result.requests in (0, 1)
    assert result.non_2xx == sum(1 for s in seen[: result.requests] if s[1] == "/missing")
    assert set(seen[:3]) == {
        ("GET", "/api/tasks/7", "Bearer tok-a", "user-a", b""),
        ("POST", "/api/tasks", "Bearer tok-b", "user-b", b'{"title": "x]]y"}'),
        ("GET", "/missing", "Bearer tok-c", "user-c", b""),
    }


def _wrk(rps: float, p99: float = 10.0, errors: int = 0) -> WrkResult:
    return WrkResult(int(rps * 4), 4.0, p99 / 2, p99 * 0.8, p99, p99 * 2, p99 / 2, errors, 0)


def _target(key: str, todo: bool, rps: float, p99: float = 10.0, errors: int = 0) -> TargetResult:
    t = TargetResult(key, key.replace("_", " "), todo)
    for route in ("get", "list", "create"):
        for clients in (1, 32, 128):
            t.levels.append(Level(route, clients, _wrk(rps, p99, errors if clients == 128 else 0)))
    t.levels[1].cpu_ms = 0.8  # get at 32 clients
    return t


def _run() -> Run:
    todo = _target("todo_asyncpg", True, 700, p99=20, errors=3)
    todo.round_trips = {"get": 1.0, "list": 1.0, "create": 2.0}
    todo.delayed = {"get": _wrk(80, 22.0), "list": _wrk(80, 30.0)}  # p50 11 and 15 ms
    todo.list_small = Level("list", 1, _wrk(100, 4.0))
    todo.list_big = Level("list_big", 1, _wrk(100, 40.0))
    return Run(
        commit="abc1234",
        date="2026-01-01 00:00 UTC",
        machine="2 cores",
        postgres="15.8",
        quick=False,
        seconds=4,
        levels=[1, 32, 128],
        one_way_delay_ms=5.0,
        targets=[
            _target("fastapi", False, 1000, p99=10),
            _target("fastapi_noauth", False, 1200),
            _target("sqlalchemy", False, 400),
            _target("neondb", False, 1000),
            todo,
        ],
    )


def test_checks_compute_each_target_from_the_figures() -> None:
    found = {(c.target.split(",")[0], c.app, c.part): c for c in checks(_run())}
    ratio = found[("todo_api ÷ FastAPI ceiling (auth)", "todo asyncpg", "get")]
    assert ratio.measured == pytest.approx(0.7)
    assert ratio.met is True
    noauth = found[("neondb alone ÷ FastAPI ceiling", "neondb alone", "list")]
    assert noauth.measured == pytest.approx(1000 / 1200)
    assert noauth.met is True
    assert found[("neondb alone ÷ tuned SQLAlchemy", "neondb alone", "get")].measured == 2.5
    assert found[("128 clients: 0 errors", "todo asyncpg", "get")].met is False
    p99 = found[("128 clients: p99 ≤ 1.5 × FastAPI ceiling's p99", "todo asyncpg", "get")]
    assert (p99.measured, p99.met) == (2.0, False)
    rt = "round trips per request = 1"
    rts = {p: found[(rt, "todo asyncpg", p)].met for p in ("get", "create")}
    assert rts == {"get": True, "create": False}
    delay = [c for c in checks(_run()) if c.target.startswith("5 ms added")]
    assert [(c.part, c.measured, c.met) for c in delay] == [
        ("get", 11.0, True),
        ("list", 15.0, False),
    ]
    size = next(c for c in checks(_run()) if c.target.startswith("list p50 at 200,000"))
    assert (size.measured, size.met, size.distance) == (10.0, False, "short by 8.50×")
    cpu = next(c for c in checks(_run()) if c.target.startswith("app CPU per get"))
    assert (cpu.measured, cpu.met) == (0.8, True)


def test_report_and_plot_from_a_saved_run(tmp_path: Path) -> None:
    run = _run()
    save_run(run, tmp_path / "run.json")
    again = load_run(tmp_path / "run.json")
    assert again == run
    text = report(again)
    assert "commit `abc1234`" in text
    assert "| todo asyncpg | get | n/a | 0.70 | 0.58 | 1.75 | n/a |" not in text  # raw absent
    assert "| todo asyncpg | get | 0.70 | 0.58 | 1.75 |" in text
    rts = "get 1.00, list 1.00, create 2.00 ✗"
    assert f"| round trips per request = 1 | todo asyncpg | {rts} | **not met** |" in text
    assert "**not met**" in text
    plot(again, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_plan_is_small() -> None:
    quick = make_plan({"QUICK": "1"})
    full = make_plan({})
    assert quick.quick
    assert not full.quick
    assert quick.levels == (32,)
    assert quick.seconds == 1
    assert quick.proxied == {t.key for t in quick.targets if t.is_todo_api}
    assert quick.sized == {t.key for t in quick.targets if t.is_todo_api and not t.pooler}
    assert {t.key for t in quick.targets} == {t.key for t in full.targets}  # every baseline
    assert quick.estimate_s() < 120
    assert full.levels == (1, 32, 128)
    assert full.estimate_s() < 15 * 60
    assert make_plan({"QUICK": "0"}).quick is False


def test_plan_refuses_an_unknown_target() -> None:
    with pytest.raises(ValueError, match="unknown"):
        make_plan({"BENCH_TARGETS": "todo_asyncpg,nope"})
