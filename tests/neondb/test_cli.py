"""neondb.cli and neondb.doctor: the URL translation shown masked, and a diagnosis of a real
database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from neondb_support import free_port, make_settings
from typer.testing import CliRunner

from neondb.cli import app
from neondb.doctor import diagnose

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


def test_url_shows_both_translations_masked(runner: CliRunner) -> None:
    result = runner.invoke(app, ["url", CONSOLE])
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert "asyncpg" in result.output
    assert "psycopg" in result.output
    assert "pooler=True" in result.output
    assert "channel_binding=require" in result.output


def test_url_reads_database_url(runner: CliRunner) -> None:
    result = runner.invoke(app, ["url"], env={"DATABASE_URL": CONSOLE})
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert "neon=True" in result.output


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


async def test_doctor_on_a_live_database(neondb_database_url: str, driver: str) -> None:
    report = await diagnose(make_settings(neondb_database_url, db_driver=driver))
    checks = {f.check: f for f in report.findings}
    assert report.ok, report.findings
    assert {"url", "driver", "pooler", "connect", "server", "statement_timeout", "tls"} <= set(
        checks
    )
    assert checks["driver"].detail == driver
    assert checks["statement_timeout"].detail.startswith("30s")


async def test_doctor_on_a_missing_database() -> None:
    url = f"postgresql://alex:{PASSWORD}@127.0.0.1:{free_port()}/db?sslmode=disable"
    report = await diagnose(make_settings(url, db_connect_timeout_s=1, db_retry_attempts=1))
    assert not report.ok
    assert [f.check for f in report.findings] == ["connect"]
    assert PASSWORD not in report.findings[0].detail
