"""`todo-api token`, `migrate` and `serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from typer.testing import CliRunner

from todo_api.cli import main
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
    assert jwt.decode(result.output.strip(), secret, algorithms=["HS256"])["sub"] == "dev"
    again = runner.invoke(main, ["token", "--sub", "dev"])
    assert jwt.decode(again.output.strip(), secret, algorithms=["HS256"])["sub"] == "dev"


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
    assert "database at revision 0001" in result.output
    result = runner.invoke(main, ["migrate", "--check"])
    assert result.exit_code == 0, result.output
    assert "(checked)" in result.output


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
