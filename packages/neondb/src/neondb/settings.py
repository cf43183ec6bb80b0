"""Configuration: one pydantic-settings class, read from the environment and `.env`.

Every knob has a default; durations carry their unit in the name (`_S`, `_MS`). Reading the
settings never connects to anything. A variable set to the empty string counts as unset
(`DATABASE_URL=` is no URL, not a blank one). A configuration error never shows the value
of a secret (a URL, a password, a key), wherever it came from.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretBytes, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from neondb.errors import ConfigurationError

__all__ = ["DatabaseSettings", "Driver", "PoolerMode", "load_settings", "secret_fields"]

Driver = Literal["asyncpg", "psycopg"]
PoolerMode = Literal["auto", "none", "transaction"]


class DatabaseSettings(BaseSettings):
    """The `DB_*` and `DATABASE_*` environment variables (see the README's table)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # `AUTH_JWKS_URL=` or `DATABASE_URL=` left blank in a deployment means "not set":
        # taken as a value, it would pass the "is it configured" checks and be unusable.
        env_ignore_empty=True,
        # pydantic's own message (DatabaseSettings() without load_settings) would quote the
        # whole input, the URLs' passwords included.
        hide_input_in_errors=True,
    )

    database_url: SecretStr | None = Field(
        default=None, description="Postgres URL; unset starts the embedded server"
    )
    database_read_url: SecretStr | None = Field(
        default=None, description="read replica URL for read-only sessions"
    )
    database_direct_url: SecretStr | None = Field(
        default=None,
        description="direct (non-pooler) URL for migrations; unset: DATABASE_URL without -pooler",
    )
    db_driver: Driver | None = Field(
        default=None,
        description="asyncpg or psycopg; unset: the driver the URL names, else asyncpg",
    )
    db_read_your_writes_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="after a client writes, its reads go to the primary for this long "
        "(DATABASE_READ_URL only; 0: never)",
    )
    db_pool_min: int = Field(default=5, ge=0, le=1000)
    db_pool_max: int = Field(default=20, ge=1, le=1000)
    db_pool_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    db_pool_recycle_s: float = Field(default=3600.0, gt=0)
    db_serverless: bool = False
    db_pooler: PoolerMode = "auto"
    db_connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    db_statement_timeout_s: float = Field(default=30.0, ge=0, le=86400)
    db_retry_attempts: int = Field(default=3, ge=1, le=20)
    db_retry_backoff_s: float = Field(default=0.1, ge=0, le=60)
    db_breaker_failures: int = Field(default=5, ge=1, le=1000)
    db_breaker_reset_s: float = Field(default=10.0, gt=0, le=3600)
    db_echo: bool = False
    db_slow_query_ms: float = Field(default=500.0, ge=0)
    db_startup_timeout_s: float = Field(default=30.0, ge=0, le=3600)
    db_migrate_on_start: bool = True
    db_data_dir: Path = Field(
        default=Path(".neondb"), description="embedded server data and dev secrets"
    )

    @model_validator(mode="after")
    def _pool_bounds(self) -> DatabaseSettings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError(
                f"DB_POOL_MIN ({self.db_pool_min}) must not exceed DB_POOL_MAX ({self.db_pool_max})"
            )
        return self

    @property
    def statement_backstop_s(self) -> float | None:
        """Client-side limit a little past the server's, for a server that never answers."""
        if not self.db_statement_timeout_s:
            return None
        return self.db_statement_timeout_s + max(2.0, self.db_statement_timeout_s * 0.1)


S = TypeVar("S", bound=BaseSettings)


# A field with one of these words in its name is treated as secret even when it is a plain
# str (a JWKS or webhook URL may carry a token or a password).
_SECRET_WORDS = ("URL", "DSN", "SECRET", "PASSWORD", "TOKEN", "KEY", "CREDENTIAL")
_MIN_REDACTED = 3  # shorter "secrets" are left alone: removing them would garble the text


def _is_secret_type(annotation: Any) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_is_secret_type(arg) for arg in typing.get_args(annotation))


def secret_fields(cls: type[BaseSettings]) -> frozenset[str]:
    """Names of the fields whose values a message must never show."""
    return frozenset(
        name
        for name, field in cls.model_fields.items()
        if _is_secret_type(field.annotation) or any(w in name.upper() for w in _SECRET_WORDS)
    )


def _secret_texts(value: Any) -> set[str]:
    """The strings a leak of `value` could show: the value itself, and a URL's password."""
    if isinstance(value, SecretStr | SecretBytes):
        value = value.get_secret_value()
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, list | tuple | set | frozenset):
        return set().union(*(_secret_texts(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(_secret_texts(v) for v in value.values())) if value else set()
    if value is None:
        return set()
    texts = {str(value), repr(value)}
    try:
        password = urlsplit(str(value)).password
    except ValueError:
        password = None
    if password:
        texts.add(password)
    return {t for t in texts if len(t) >= _MIN_REDACTED}


def _redact(message: str, texts: set[str]) -> str:
    for text in sorted(texts, key=len, reverse=True):  # longest first: a URL before its password
        message = message.replace(text, "***")
    return message


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Read settings, turning pydantic's error into one that names each variable and its form.

    A plain value that was rejected is shown, to help (`DB_POOL_MAX: ... (got 'abc')`); the
    value of a secret field never is, nor the settings as a whole (a cross-field check
    such as DB_POOL_MIN <= DB_POOL_MAX), and any secret value that a validator's own
    message quotes is replaced by `***`."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        secret = secret_fields(cls)
        texts: set[str] = set()
        for name in secret:
            texts |= _secret_texts(overrides.get(name))
        for var, value in os.environ.items():
            if var.lower() in secret:
                texts |= _secret_texts(value)
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            given = err.get("input")
            if isinstance(given, dict):  # the whole input: gather the secrets it holds
                for key, value in given.items():
                    if str(key).lower() in secret:
                        texts |= _secret_texts(value)
            field = str(loc[0]).lower() if loc else None
            if field in secret:
                texts |= _secret_texts(given)
            name = "_".join(str(p) for p in loc).upper() or "settings"
            plain = len(loc) == 1 and field in cls.model_fields and field not in secret
            shown = f" (got {given!r:.60})" if plain and not isinstance(given, dict) else ""
            problems.append(f"{name}: {err['msg']}{shown}")
        message = _redact("bad configuration: " + "; ".join(problems), texts)
        raise ConfigurationError(message) from None
