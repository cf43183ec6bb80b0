"""Configuration errors never show a secret (through `load_settings`, pydantic's own error,
and every command that reads the settings), and an empty variable counts as unset (so
production without a usable key or database refuses to start)."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import SecretBytes, SecretStr, ValidationError

from neondb import ConfigurationError, DatabaseSettings, load_settings
from neondb.settings import secret_fields
from todo_api.app import create_app
from todo_api.auth import Authenticator
from todo_api.settings import AppSettings
from todo_api.testing import TEST_SECRET

# One distinctive secret per field; each leak would be easy to spot in any output.
PASSWORDS = {
    "DATABASE_URL": "pw-primary-9f3Kx",
    "DATABASE_READ_URL": "pw-replica-7Qm2z",
    "DATABASE_DIRECT_URL": "pw-direct-4Hs8w",
}
AUTH_SECRET = "as-5Tn1v-" + "k" * 40  # a usable HS256 key (32+ bytes)
JWKS_TOKEN = "jwks-tok-3Lp6r"
SECRETS = {
    "DATABASE_URL": f"postgresql://alice:{PASSWORDS['DATABASE_URL']}@127.0.0.1:1/app",
    "DATABASE_READ_URL": f"postgresql://alice:{PASSWORDS['DATABASE_READ_URL']}@127.0.0.1:1/app",
    "DATABASE_DIRECT_URL": (
        f"postgresql://alice:{PASSWORDS['DATABASE_DIRECT_URL']}@127.0.0.1:1/app"
    ),
    "AUTH_SECRET": AUTH_SECRET,
    "AUTH_JWKS_URL": f"http://127.0.0.1:9/jwks.json?token={JWKS_TOKEN}",
}
# What must appear nowhere: each password, the key (and its start: a cut-off quote of the
# settings leaked the first characters), the JWKS token.
NEVER = [*PASSWORDS.values(), AUTH_SECRET, AUTH_SECRET[:9], JWKS_TOKEN]

# A cross-field check (it used to quote the whole input) and a plain field error.
BAD = {
    "cross-field": ({"DB_POOL_MIN": "30", "DB_POOL_MAX": "5"}, "DB_POOL_MIN (30)"),
    "field": ({"DB_POOL_MAX": "abc"}, "DB_POOL_MAX"),
}


def assert_no_secret(text: str) -> None:
    for secret in NEVER:
        assert secret not in text


def _secret_typed(annotation: object) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_secret_typed(a) for a in typing.get_args(annotation))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("DB_", "DATABASE_", "AUTH_", "APP_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no `.env`
    monkeypatch.setenv("DB_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def test_every_secret_field_is_covered() -> None:
    """A new SecretStr field must be added to SECRETS (and so to these tests)."""
    typed = {n.upper() for n, f in AppSettings.model_fields.items() if _secret_typed(f.annotation)}
    assert typed == {"DATABASE_URL", "DATABASE_READ_URL", "DATABASE_DIRECT_URL", "AUTH_SECRET"}
    assert typed <= set(SECRETS)
    assert {n.upper() for n in secret_fields(AppSettings)} == set(SECRETS)
    assert {n.upper() for n in secret_fields(DatabaseSettings)} == set(PASSWORDS)


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("cls", [DatabaseSettings, AppSettings])
def test_load_settings_error_shows_no_secret(
    clean_env: pytest.MonkeyPatch, cls: type[DatabaseSettings], bad: str
) -> None:
    variables, says = BAD[bad]
    for name, value in {**SECRETS, **variables}.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(cls)
    assert says in str(info.value)
    assert_no_secret(str(info.value))
    assert_no_secret(repr(info.value))
    # pydantic's own error, for code that builds the settings directly, quotes no input.
    with pytest.raises(ValidationError) as raw:
        cls()
    assert_no_secret(str(raw.value))


def test_secrets_from_a_dotenv_file_and_overrides_are_not_shown(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in SECRETS.items()) + "DB_POOL_MIN=30\nDB_POOL_MAX=5\n"
    )
    with pytest.raises(ConfigurationError) as info:
        load_settings(AppSettings)
    assert "DB_POOL_MIN (30)" in str(info.value)
    assert_no_secret(str(info.value))
    overrides = {k.lower(): v for k, v in SECRETS.items()}
    with pytest.raises(ConfigurationError) as info:
        load_settings(AppSettings, _env_file=None, db_pool_min=30, db_pool_max=5, **overrides)
    assert_no_secret(str(info.value))


def test_a_validator_quoting_a_secret_is_redacted(clean_env: pytest.MonkeyPatch) -> None:
    """Even a (subclass's) check whose message quotes a secret value shows `***`."""
    from pydantic import field_validator

    class Quoting(DatabaseSettings):
        @field_validator("database_url")
        @classmethod
        def _quote(cls, v: SecretStr | None) -> SecretStr | None:
            raise ValueError(f"no good: {v.get_secret_value() if v else v}")

    clean_env.setenv("DATABASE_URL", SECRETS["DATABASE_URL"])
    with pytest.raises(ConfigurationError) as info:
        load_settings(Quoting)
    assert "DATABASE_URL: Value error, no good: ***" in str(info.value)
    assert_no_secret(str(info.value))


def test_a_plain_bad_value_is_still_shown(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DB_DRIVER", "mysql")
    with pytest.raises(ConfigurationError, match=r"DB_DRIVER.*got 'mysql'"):
        load_settings(DatabaseSettings)


COMMANDS = [
    ["todo-api", "serve"],
    ["todo-api", "token", "--sub", "alice"],
    ["todo-api", "migrate"],
    ["todo-api", "db", "upgrade"],
    ["todo-api", "db", "current"],
    ["todo-api", "db", "check"],
    ["todo-api", "db", "seed"],
    ["neondb", "doctor"],
    ["neondb", "url"],
]


# Each command starts a Python process (a few seconds on a busy machine): every command
# with the cross-field error, two of them with a plain field error as well.
CASES = [(c, "cross-field") for c in COMMANDS] + [
    (["todo-api", "serve"], "field"),
    (["neondb", "doctor"], "field"),
]


@pytest.mark.parametrize(("command", "bad"), CASES, ids=[f"{' '.join(c)}-{b}" for c, b in CASES])
def test_commands_show_no_secret(tmp_path: Path, command: list[str], bad: str) -> None:
    variables, says = BAD[bad]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DB_", "DATABASE_", "AUTH_", "APP_"))
    }
    env.update(SECRETS, **variables, DB_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        [str(Path(sys.executable).with_name(command[0])), *command[1:]],
        env=env,
        cwd=tmp_path,
        capture_output=True,  # piped: no terminal, nothing wrapped or coloured
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr
    assert_no_secret(done.stdout + done.stderr)
    assert not (tmp_path / "data").exists()  # refused before anything started


# empty means unset --------------------------------------------------------------------------


def test_empty_variables_count_as_unset(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DATABASE_URL", "DATABASE_READ_URL", "AUTH_SECRET", "AUTH_JWKS_URL"):
        clean_env.setenv(name, "")
    clean_env.setenv("DB_POOL_MAX", "")
    s = load_settings(AppSettings)
    assert (s.database_url, s.database_read_url, s.auth_secret, s.auth_jwks_url) == (None,) * 4
    assert s.db_pool_max == 20  # the default
    (tmp_path / ".env").write_text("DATABASE_DIRECT_URL=\nAPP_ENV=\n")
    s = load_settings(AppSettings)
    assert s.database_direct_url is None
    assert s.app_env == "development"


def test_production_with_an_empty_jwks_url_refuses_to_start(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("APP_ENV", "production")
    clean_env.setenv("DATABASE_URL", SECRETS["DATABASE_URL"])
    clean_env.setenv("AUTH_JWKS_URL", "")  # it used to start, then answer every token 401
    with pytest.raises(ConfigurationError, match="AUTH_SECRET") as info:
        create_app()
    assert "AUTH_JWKS_URL" in str(info.value)
    clean_env.setenv("AUTH_SECRET", "")
    with pytest.raises(ConfigurationError, match="AUTH_SECRET"):
        create_app()


def test_production_with_an_empty_database_url_refuses_to_start(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Empty is unset, and unset means the embedded server: not in production."""
    clean_env.setenv("APP_ENV", "production")
    clean_env.setenv("AUTH_SECRET", TEST_SECRET)
    clean_env.setenv("DATABASE_URL", "")
    with pytest.raises(ConfigurationError, match=r"APP_ENV=production needs DATABASE_URL"):
        create_app()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("todo-api")), "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "APP_ENV=production needs DATABASE_URL" in done.stderr
    assert "http://" not in done.stdout  # never got as far as announcing the address
    assert not (tmp_path / "data").exists()  # no embedded server


def test_development_with_an_empty_database_url_uses_the_embedded_server(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("DATABASE_URL", "")
    assert load_settings(AppSettings).database_url is None  # it used to be a "bad URL"


def test_authenticator_treats_empty_keys_as_missing() -> None:
    with pytest.raises(ConfigurationError, match="set AUTH_SECRET or AUTH_JWKS_URL"):
        Authenticator(secret="", jwks_url="")
    with pytest.raises(ConfigurationError, match="set AUTH_SECRET or AUTH_JWKS_URL"):
        Authenticator(jwks_url="  ")
