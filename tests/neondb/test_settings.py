"""neondb.settings: defaults, the environment and `.env`, clear errors, no connection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from neondb import ConfigurationError, Database, DatabaseSettings, NeonDB, load_settings

PASSWORD = "env-s3cret-42a9"

NEON_HOST = "ep-x-1.eu-central-1.aws.neon.tech"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No DB_* / DATABASE_* variable set, and a working folder without a `.env`."""
    for name in list(os.environ):
        if name.upper().startswith(("DB_", "DATABASE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults_match_the_documented_table(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings(DatabaseSettings)
    assert s.database_url is None  # embedded server
    assert s.database_read_url is None
    assert s.db_driver is None  # the URL's driver, else asyncpg
    assert (s.db_pool_min, s.db_pool_max) == (5, 20)
    assert s.db_pool_timeout_s == 30
    assert s.db_pool_recycle_s == 3600
    assert s.db_serverless is False
    assert s.db_pooler == "auto"
    assert s.db_connect_timeout_s == 10
    assert s.db_statement_timeout_s == 30
    assert (s.db_retry_attempts, s.db_retry_backoff_s) == (3, 0.1)
    assert (s.db_breaker_failures, s.db_breaker_reset_s) == (5, 10)
    assert s.db_echo is False
    assert s.db_slow_query_ms == 500
    assert s.db_startup_timeout_s == 30
    assert s.db_migrate_on_start is True
    assert s.db_data_dir == Path(".neondb")
    assert Database(s).driver == "asyncpg"


def test_values_come_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", f"postgresql://u:{PASSWORD}@h/db")
    clean_env.setenv("DB_POOL_MAX", "7")
    clean_env.setenv("db_pool_min", "2")  # case does not matter
    clean_env.setenv("DB_DRIVER", "psycopg")
    clean_env.setenv("DB_SERVERLESS", "true")
    clean_env.setenv("DB_POOLER", "transaction")
    clean_env.setenv("DB_STATEMENT_TIMEOUT_S", "1.5")
    s = load_settings(DatabaseSettings)
    assert s.database_url is not None
    assert s.database_url.get_secret_value() == f"postgresql://u:{PASSWORD}@h/db"
    assert (s.db_pool_min, s.db_pool_max) == (2, 7)
    assert s.db_driver == "psycopg"
    assert s.db_serverless is True
    assert s.db_pooler == "transaction"
    assert s.db_statement_timeout_s == 1.5


def test_values_come_from_a_dotenv_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DB_POOL_MAX=9\nDB_ECHO=1\nTODO_OTHER=ignored\n")
    s = load_settings(DatabaseSettings)
    assert s.db_pool_max == 9
    assert s.db_echo is True
    clean_env.setenv("DB_POOL_MAX", "11")  # the environment wins over the file
    assert load_settings(DatabaseSettings).db_pool_max == 11


def test_overrides_win(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DB_POOL_MAX", "7")
    assert load_settings(DatabaseSettings, db_pool_max=3, db_pool_min=1).db_pool_max == 3


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DB_POOL_MAX", "abc", "DB_POOL_MAX"),
        ("DB_POOL_MAX", "0", "DB_POOL_MAX"),
        ("DB_DRIVER", "mysql", "DB_DRIVER"),
        ("DB_POOLER", "session", "DB_POOLER"),
        ("DB_CONNECT_TIMEOUT_S", "0", "DB_CONNECT_TIMEOUT_S"),
        ("DB_STATEMENT_TIMEOUT_S", "-1", "DB_STATEMENT_TIMEOUT_S"),
        ("DB_RETRY_ATTEMPTS", "0", "DB_RETRY_ATTEMPTS"),
        ("DB_SERVERLESS", "perhaps", "DB_SERVERLESS"),
        ("DB_POOL_MIN", "30", "DB_POOL_MIN (30) must not exceed DB_POOL_MAX (20)"),
    ],
)
def test_a_bad_value_names_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(DatabaseSettings)
    assert says in str(info.value)
    assert str(info.value).startswith("bad configuration: ")
    assert isinstance(info.value, ValueError)


def test_several_bad_values_are_all_named(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DB_POOL_MAX", "abc")
    clean_env.setenv("DB_DRIVER", "mysql")
    with pytest.raises(ConfigurationError) as info:
        load_settings(DatabaseSettings)
    assert "DB_POOL_MAX" in str(info.value)
    assert "DB_DRIVER" in str(info.value)
    assert "'abc'" in str(info.value)  # a plain value is shown, to help


def test_a_bad_database_url_never_echoes_the_password(clean_env: pytest.MonkeyPatch) -> None:
    # Wrong type for the URL itself: the value is not shown.
    with pytest.raises(ConfigurationError) as info:
        load_settings(DatabaseSettings, database_url=["postgresql://u:" + PASSWORD + "@h/db"])
    assert "DATABASE_URL" in str(info.value)
    assert PASSWORD not in str(info.value)
    # Another variable wrong while the URL is fine: the URL is not in the message either.
    clean_env.setenv("DATABASE_URL", f"postgresql://u:{PASSWORD}@h/db")
    clean_env.setenv("DATABASE_READ_URL", f"postgresql://u:{PASSWORD}@replica/db")
    clean_env.setenv("DB_POOL_MAX", "abc")
    with pytest.raises(ConfigurationError) as info:
        load_settings(DatabaseSettings)
    assert PASSWORD not in str(info.value)


async def test_an_unusable_database_url_fails_at_start_without_the_password(
    clean_env: pytest.MonkeyPatch,
) -> None:
    for raw in (
        f"mysql://u:{PASSWORD}@127.0.0.1/db",
        f"postgresql://u:{PASSWORD}@127.0.0.1:port/db",
        f"postgresql://u:{PASSWORD}@{NEON_HOST}/db?sslmode=disable",
    ):
        clean_env.setenv("DATABASE_URL", raw)
        settings = load_settings(DatabaseSettings)
        assert PASSWORD not in repr(settings)
        assert PASSWORD not in str(settings)
        db = Database(settings)
        with pytest.raises(ConfigurationError) as info:
            await db.start()
        assert PASSWORD not in str(info.value)
        assert PASSWORD not in repr(info.value)
        assert db._engine is None  # refused before any engine or connection


def test_statement_backstop_is_a_little_past_the_server_timeout() -> None:
    assert DatabaseSettings(_env_file=None, db_statement_timeout_s=30).statement_backstop_s == 33
    assert DatabaseSettings(_env_file=None, db_statement_timeout_s=1).statement_backstop_s == 3
    assert DatabaseSettings(_env_file=None, db_statement_timeout_s=0).statement_backstop_s is None


def test_nothing_connects_at_import_or_construction(tmp_path: Path) -> None:
    """Import every module, read the settings, build Database and NeonDB: no connection is
    attempted to DATABASE_URL, and with it unset no embedded server is started."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    script = (
        "import importlib, pkgutil, neondb\n"
        "for m in pkgutil.iter_modules(neondb.__path__):\n"
        "    importlib.import_module('neondb.' + m.name)\n"
        "from neondb import Database, DatabaseSettings, NeonDB, load_settings\n"
        "s = load_settings(DatabaseSettings)\n"
        "Database(s); NeonDB(s)\n"
        "import os\n"
        "os.environ.pop('DATABASE_URL')\n"
        "Database(load_settings(DatabaseSettings)); NeonDB()\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("DB_", "DATABASE_"))}
    env["DATABASE_URL"] = f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db"
    env["DB_DATA_DIR"] = str(tmp_path / "data")
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked
    finally:
        listener.close()
    assert not (tmp_path / "data").exists()  # no embedded server either


def test_neondb_reads_the_environment_when_given_no_settings(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("DB_POOL_MAX", "4")
    clean_env.setenv("DB_POOL_MIN", "1")
    assert NeonDB().settings.db_pool_max == 4
    assert Database().settings.db_pool_max == 4
