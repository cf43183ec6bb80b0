"""neondb.cli: the URL translation shown masked; `neondb doctor` as a command (its table and
its JSON, exit codes); the doctor's steps themselves are in test_doctor.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from neondb_support import free_port
from typer.testing import CliRunner

from neondb.cli import app
from neondb.doctor import STEPS

PASSWORD = "cli-s3cret-0b5e"
# Host apart from the userinfo, so no line reads like a committed Neon credential.
NEON_HOST = "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech"
CONSOLE = f"postgresql://alex:{PASSWORD}@{NEON_HOST}/neondb?sslmode=require&channel_binding=require"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    for name in list(os.environ):
        if name.upper().startswith(("DB_", "DATABASE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_url_names_the_driver_picked_and_why(runner: CliRunner) -> None:
    result = runner.invoke(app, ["url", CONSOLE])
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["endpoint"].startswith("Neon, transaction pooler: the host name has -pooler")
    assert lines["driver"].startswith("psycopg: behind a transaction pooler")
    assert "channel_binding=require" in lines["psycopg"]
    assert "password=***" in lines["psycopg"]
    # psycopg is the driver: asyncpg's channel-binding warning would be beside the point.
    assert "asyncpg cannot" not in result.output


def test_url_shows_tls_in_words(runner: CliRunner) -> None:
    direct = CONSOLE.replace("-pooler", "")
    result = runner.invoke(app, ["url", direct])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["driver"].startswith("asyncpg: the default on a direct endpoint")
    assert lines["tls"].startswith(
        "verify-full: encrypted; certificate and host name checked against the system CAs"
    )
    assert "SSLContext" not in result.output
    assert "object at 0x" not in result.output
    assert "password='***'" in lines["asyncpg"]
    psycopg = runner.invoke(app, ["url", direct, "--driver", "psycopg"])
    tls = dict(line.split(None, 1) for line in psycopg.stdout.splitlines())["tls"]
    assert tls == (
        "require: encrypted; certificate not checked; SCRAM channel binding required "
        "(enforced by libpq)"
    )


def test_url_reads_database_url(runner: CliRunner) -> None:
    result = runner.invoke(app, ["url"], env={"DATABASE_URL": CONSOLE})
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert result.stdout.startswith("url      postgresql://alex:***@" + NEON_HOST)


@pytest.mark.parametrize(
    "bad",
    [
        f"mysql://alex:{PASSWORD}@h/db",
        f"postgresql://alex:{PASSWORD}@h/db?sslmode=disable&channel_binding=require",
    ],
)
def test_url_refusal_exits_2_without_the_password(runner: CliRunner, bad: str) -> None:
    result = runner.invoke(app, ["url", bad])
    assert result.exit_code == 2
    assert PASSWORD not in result.output


def test_bad_setting_exits_2_naming_it(runner: CliRunner) -> None:
    result = runner.invoke(app, ["url", CONSOLE], env={"DB_POOL_MAX": "abc"})
    assert result.exit_code == 2
    assert "DB_POOL_MAX" in result.output


def _neondb(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """Run the installed `neondb` command with stdout piped (not a terminal)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_"))}
    base.pop("PYTHONPATH", None)
    base.update(env or {})
    cli = Path(sys.executable).parent / "neondb"
    return subprocess.run(
        [str(cli), *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=120
    )


def test_embedded_url_is_one_line_that_psql_accepts(tmp_path: Path) -> None:
    # A long project path: rich used to wrap the URL at 80 columns when piped.
    data = tmp_path / ("a-long-project-folder-name-" * 3) / ".neondb"
    env = {"DB_DATA_DIR": str(data)}
    try:
        result = _neondb("embedded", "url", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        url = result.stdout
        assert url.endswith("\n")
        assert url.count("\n") == 1
        assert len(url) > 80
        psql = shutil.which("psql") or "/usr/bin/psql"
        answer = subprocess.run(
            [psql, url.strip(), "-Atc", "SELECT 6 * 7"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert answer.stdout.strip() == "42", answer.stderr
    finally:
        _neondb("embedded", "stop", cwd=tmp_path, env=env)


def test_url_output_is_not_wrapped_when_piped(tmp_path: Path) -> None:
    result = _neondb("url", CONSOLE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    keys = [line.split(None, 1)[0] for line in result.stdout.splitlines()]
    assert keys == ["url", "endpoint", "driver", "tls", "psycopg"]
    assert result.stderr == ""


def test_version(tmp_path: Path) -> None:
    result = _neondb("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("neondb ")


def _table_rows(out: str) -> dict[str, tuple[str, str]]:
    """The doctor's table, read back: step -> (status, detail and fix with the folds and
    spaces taken out)."""
    rows: dict[str, list[str]] = {}
    name = ""
    for line in out.splitlines():
        if not line.startswith("│"):
            continue
        step, status, detail = (cell.strip() for cell in line.split("│")[1:-1])
        if step:
            name = step
            rows[name] = [status, ""]
        rows[name][1] += detail
    return {k: (v[0], "".join(v[1].split())) for k, v in rows.items() if k != "step"}


def _same_content(table: str, report: dict[str, Any]) -> None:
    """The table and the JSON say the same, but for measured numbers (two runs)."""
    rows = _table_rows(table)
    assert list(rows) == list(STEPS)
    for step in report["steps"]:
        status, text = rows[step["name"]]
        assert status == {"fail": "FAIL"}.get(step["status"], step["status"])
        want = step["detail"] + (f"fix: {step['fix']}" if step["fix"] else "")
        assert re.sub(r"\d+", "#", text) == re.sub(r"\d+", "#", "".join(want.split()))
    said = " ".join(line for line in table.splitlines() if line[:1] not in "┌├│└")
    assert " ".join(said.split()) == f"next: {report['next']}"


def _piped_table(out: str) -> None:
    assert "\x1b[" not in out  # no colour codes into a pipe
    assert max(len(line) for line in out.splitlines()) <= 80  # fits, folds, is not cut


def test_doctor_all_green_on_the_test_server(tmp_path: Path, neondb_database_url: str) -> None:
    env = {"DATABASE_URL": neondb_database_url, "WEB_CONCURRENCY": "2"}
    result = _neondb("doctor", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    _piped_table(result.stdout)
    as_json = _neondb("doctor", "--json", cwd=tmp_path, env=env)
    assert as_json.returncode == 0
    assert as_json.stdout.count("\n") == 1  # one line, never wrapped
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert {s["status"] for s in report["steps"]} == {"ok", "skipped"}
    connections = next(s for s in report["steps"] if s["name"] == "max_connections")
    assert connections["data"]["workers"] == 2
    _same_content(result.stdout, report)


def test_doctor_on_a_stopped_server(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"postgresql://alex:{PASSWORD}@127.0.0.1:{free_port()}/db"}
    result = _neondb("doctor", cwd=tmp_path, env=env)
    assert result.returncode == 1
    _piped_table(result.stdout)
    rows = _table_rows(result.stdout)
    assert rows["connect"][0] == "FAIL"
    assert "fix:starttheserver" in rows["connect"][1]
    assert {rows[n][0] for n in STEPS[STEPS.index("connect") + 1 :]} == {"skipped"}
    as_json = _neondb("doctor", "--json", cwd=tmp_path, env=env)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert report["next"].startswith("connect failed: start the server")
    _same_content(result.stdout, report)
    assert PASSWORD not in result.stdout + result.stderr + as_json.stdout + as_json.stderr


def test_doctor_strict_counts_warnings(tmp_path: Path, neondb_database_url: str) -> None:
    # 1000 connections per worker: more than the server allows, a warning.
    env = {"DATABASE_URL": neondb_database_url, "DB_POOL_MAX": "1000"}
    assert _neondb("doctor", "--json", cwd=tmp_path, env=env).returncode == 0
    assert _neondb("doctor", "--json", "--strict", cwd=tmp_path, env=env).returncode == 1


def test_url_masks_every_secret_parameter(runner: CliRunner) -> None:
    url = f"postgresql+psycopg://alex:{PASSWORD}@db.example.com/app?sslmode=require&sslpassword=k3y-pass-77"
    result = runner.invoke(app, ["url", url])
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert "k3y-pass-77" not in result.output
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert "sslpassword=***" in lines["psycopg"]
