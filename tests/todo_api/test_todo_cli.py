"""`todo-api token`, `migrate` and `serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from typer.testing import CliRunner

from todo_api.cli import main
from todo_api.models import MIGRATIONS
from todo_api.testing import TEST_SECRET

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer settings leak in: no `.env` in the working folder, no such variables."""
    for name in list(os.environ):
        if name.startswith(("DB_", "DATABASE_", "AUTH_")) or name in ("APP_ENV", "HOST", "PORT"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_token_with_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_SECRET", TEST_SECRET)
    result = runner.invoke(main, ["token", "--sub", "alice"])
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.output.strip(), TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert "role" not in claims
    assert claims["exp"] - claims["iat"] == 3600

    result = runner.invoke(main, ["token", "--sub", "root", "--admin", "--ttl-s", "60"])
    claims = jwt.decode(result.output.strip(), TEST_SECRET, algorithms=["HS256"])
    assert claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 60


def test_token_rejects_bad_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_SECRET", TEST_SECRET)
    assert runner.invoke(main, ["token", "--sub", "a", "--ttl-s", "0"]).exit_code == 2
    assert runner.invoke(main, ["token"]).exit_code == 2  # --sub is required


def test_token_in_development_uses_the_generated_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DB_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(main, ["token", "--sub", "dev"])
    assert result.exit_code == 0, result.output
    secret = (tmp_path / "data" / "auth_secret").read_text().strip()
    assert jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])["sub"] == "dev"
    again = runner.invoke(main, ["token", "--sub", "dev"])
    assert jwt.decode(again.stdout.strip(), secret, algorithms=["HS256"])["sub"] == "dev"


def test_token_in_production_without_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    result = runner.invoke(main, ["token", "--sub", "alice"])
    assert result.exit_code == 2
    assert "AUTH_SECRET" in result.output
    monkeypatch.setenv("AUTH_JWKS_URL", "http://127.0.0.1:9/jwks.json")
    result = runner.invoke(main, ["token", "--sub", "alice"])
    assert result.exit_code == 2
    assert "identity provider" in result.output


def test_bad_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "staging")
    result = runner.invoke(main, ["token", "--sub", "alice"])
    assert result.exit_code == 2
    assert "APP_ENV" in result.output


def test_migrate_and_check(monkeypatch: pytest.MonkeyPatch, neondb_schema_url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", neondb_schema_url)
    monkeypatch.setenv("DB_POOL_MIN", "1")
    result = runner.invoke(main, ["migrate", "--check"])
    assert result.exit_code == 1
    assert "revision None" in result.output
    result = runner.invoke(main, ["migrate"])
    assert result.exit_code == 0, result.output
    assert f"database upgraded from revision None to {MIGRATIONS.head()}" in result.output
    result = runner.invoke(main, ["migrate", "--check"])
    assert result.exit_code == 0, result.output
    assert "models match the migrations" in result.output


def test_migrate_unreachable_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:9/db")
    monkeypatch.setenv("DB_STARTUP_TIMEOUT_S", "0")
    monkeypatch.setenv("DB_RETRY_ATTEMPTS", "1")
    result = runner.invoke(main, ["migrate"])
    assert result.exit_code == 1
    assert result.output.startswith("error:")


def test_serve_in_production_without_secret_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    result = runner.invoke(main, ["serve"])
    assert result.exit_code == 2
    assert "AUTH_SECRET" in result.output
    assert "http://" not in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_starts_uvicorn_with_the_factory(neondb_schema_url: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DATABASE_URL=neondb_schema_url, AUTH_SECRET=TEST_SECRET, DB_POOL_MIN="1")
    cli = Path(sys.executable).parent / "todo-api"
    proc = subprocess.Popen(
        [str(cli), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert status == 200
        token = runner.invoke(main, ["token", "--sub", "alice"], env={"AUTH_SECRET": TEST_SECRET})
        r = httpx.get(
            f"http://127.0.0.1:{port}/api/tasks",
            headers={"Authorization": f"Bearer {token.output.strip()}"},
            timeout=5,
        )
        assert r.status_code == 200
        assert r.json() == {"items": [], "total": 0}
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in output
    assert "todo-api token --sub alice" in output
    assert TEST_SECRET not in output


assert_stdout_line_count = 1  # `$(todo-api token ...)`: stdout is the token alone


def _todo_api(*args: str, cwd: Path, env: dict[str, str], timeout: float = 60) -> Any:
    """Run the installed `todo-api` with stdout and stderr piped (not a terminal)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_", "AUTH_"))}
    base.pop("PYTHONPATH", None)
    base.update(env)
    cli = Path(sys.executable).parent / "todo-api"
    return subprocess.run(
        [str(cli), *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=timeout
    )


def test_token_elsewhere_says_loudly_that_it_made_a_new_secret(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = _todo_api("token", "--sub", "alice", cwd=elsewhere, env={})
    assert first.returncode == 0, first.stderr
    made = (elsewhere / ".neondb" / "auth_secret").resolve()
    assert len(first.stdout.strip().splitlines()) == assert_stdout_line_count
    assert "new one was made" in first.stderr
    assert str(made) in first.stderr
    assert "DB_DATA_DIR" in first.stderr
    # The secret now exists: the next token is signed with it, silently.
    second = _todo_api("token", "--sub", "alice", cwd=elsewhere, env={})
    assert second.stderr == ""
    secret = made.read_text().strip()
    assert jwt.decode(second.stdout.strip(), secret, algorithms=["HS256"])["sub"] == "alice"


def test_help_shows_flags_as_typed(tmp_path: Path) -> None:
    result = _todo_api("token", "--help", cwd=tmp_path, env={})
    assert result.returncode == 0
    admin = next(line for line in result.stdout.splitlines() if "--admin" in line)
    assert "<bool>" not in admin
    assert "<bool>" not in result.stdout


def test_version(tmp_path: Path) -> None:
    result = _todo_api("--version", cwd=tmp_path, env={})
    assert result.returncode == 0
    assert result.stdout.startswith("todo-api ")
    assert "neondb " in result.stdout


def test_serve_refuses_a_bad_url_in_one_line_before_the_banner(tmp_path: Path) -> None:
    result = _todo_api("serve", cwd=tmp_path, env={"DATABASE_URL": "garbage"})
    assert result.returncode == 2
    assert result.stdout == ""  # no "todo_api on http://..." banner
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0]
    assert "postgresql://user:password@host:port/database" in lines[0]


def test_serve_with_an_unreachable_database_says_so_in_lines(tmp_path: Path) -> None:
    password = "s3cret-unreachable"
    url = f"postgresql://app:{password}@127.0.0.1:{_free_port()}/db"
    result = _todo_api(
        "serve",
        "--port",
        str(_free_port()),
        cwd=tmp_path,
        env={"DATABASE_URL": url, "DB_STARTUP_TIMEOUT_S": "2", "AUTH_SECRET": TEST_SECRET},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert password not in output
    assert "Traceback" not in output
    # The banner names the database in use, masked, with the driver.
    assert "database: postgresql://app:***@127.0.0.1" in result.stdout
    assert "driver asyncpg" in result.stdout
    attempts = [line for line in output.splitlines() if "database not ready, attempt" in line]
    assert len(attempts) >= 2
    assert all(" s spent, " in line and " s left)" in line for line in attempts)
    final = [line for line in output.splitlines() if "start-up failed" in line]
    assert final, output
    assert "DATABASE_URL=postgresql://app:***@127.0.0.1" in final[0]
    assert "DB_STARTUP_TIMEOUT_S=2" in final[0]


def test_serve_gives_an_unresolvable_host_a_short_retry(tmp_path: Path) -> None:
    # .invalid never resolves (RFC 2606); the start-up timeout is far longer than the retry.
    url = "postgresql://app:pw@ep-typo-in-the-host.invalid/db"
    result = _todo_api(
        "serve",
        "--port",
        str(_free_port()),
        cwd=tmp_path,
        env={"DATABASE_URL": url, "DB_STARTUP_TIMEOUT_S": "300", "AUTH_SECRET": TEST_SECRET},
        timeout=100,  # well under the 300 s start-up timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    final = [line for line in output.splitlines() if "start-up failed" in line]
    assert final, output
    assert "does not resolve" in final[0]
    assert "ep-typo-in-the-host.invalid" in final[0]


def test_serve_banner_names_a_pooler_and_the_driver_picked(tmp_path: Path) -> None:
    url = "postgresql://app:pw@127.0.0.1:1/db"
    result = _todo_api(
        "serve",
        cwd=tmp_path,
        env={
            "DATABASE_URL": url,
            "DB_POOLER": "transaction",
            "DB_SERVERLESS": "true",
            "DB_STARTUP_TIMEOUT_S": "0",
            "DB_RETRY_ATTEMPTS": "1",
            "AUTH_SECRET": TEST_SECRET,
        },
    )
    banner = next(line for line in result.stdout.splitlines() if line.startswith("database: "))
    assert banner == (
        "database: postgresql://app:***@127.0.0.1:1/db, driver psycopg, "
        "behind a transaction pooler, serverless (no pool between requests)"
    )
