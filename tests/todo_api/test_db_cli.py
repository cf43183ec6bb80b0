"""`todo-api db`: upgrade, downgrade, current, check and seed, run as a user runs them (the
installed command, output piped); concurrent upgrades from separate processes migrate once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from neondb.testing import admin_execute
from todo_api.models import MIGRATIONS

HEAD = MIGRATIONS.head()


def todo_api(*args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_", "AUTH_"))}
    env.pop("PYTHONPATH", None)
    env["DATABASE_URL"] = url
    cli = Path(sys.executable).parent / "todo-api"
    return subprocess.run(
        [str(cli), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def start(*args: str, url: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_", "AUTH_"))}
    env.pop("PYTHONPATH", None)
    env["DATABASE_URL"] = url
    cli = Path(sys.executable).parent / "todo-api"
    return subprocess.Popen(
        [str(cli), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_upgrade_current_check_downgrade(neondb_schema_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> Any:
        return todo_api("db", *args, url=neondb_schema_url, cwd=tmp_path)

    check = run("check")
    assert check.returncode == 1
    assert check.stderr.startswith("drift: database at revision None")
    assert run("current").stdout.strip() == f"database at revision None; migrations head is {HEAD}"
    assert run("upgrade").stdout.strip() == f"database upgraded from revision None to {HEAD}"
    assert run("upgrade").stdout.strip() == f"database already at revision {HEAD}"
    check = run("check")
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == f"database at revision {HEAD}; models match the migrations"
    down = run("downgrade", "base")
    assert down.stdout.strip() == f"database downgraded from revision {HEAD} to None"
    assert run("check").returncode == 1


def test_seed_twice_adds_once(neondb_schema_url: str, tmp_path: Path) -> None:
    first = todo_api("db", "seed", url=neondb_schema_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("seeded 5 tasks, 1 conversations and 3 messages for 'demo'")
    again = todo_api("db", "seed", url=neondb_schema_url, cwd=tmp_path)
    assert again.stdout.startswith("seeded 0 tasks, 0 conversations and 0 messages")
    counts = admin_execute(
        neondb_schema_url,
        "SELECT (SELECT count(*) FROM tasks WHERE user_id = 'demo'), "
        "(SELECT count(*) FROM conversations), (SELECT count(*) FROM messages)",
    )
    assert counts == [(5, 1, 3)]
    other = todo_api("db", "seed", "--user", "bob", url=neondb_schema_url, cwd=tmp_path)
    assert other.stdout.startswith("seeded 5 tasks, 1 conversations and 3 messages for 'bob'")


@pytest.mark.timeout(180)
def test_concurrent_upgrades_from_separate_processes_migrate_once(
    neondb_schema_url: str, tmp_path: Path
) -> None:
    procs = [start("db", "upgrade", url=neondb_schema_url, cwd=tmp_path) for _ in range(4)]
    outputs = [p.communicate(timeout=150) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outputs]
    lines = sorted(out.strip() for out, _ in outputs)
    assert lines == sorted(
        [f"database upgraded from revision None to {HEAD}"]
        + [f"database already at revision {HEAD}"] * 3
    )
