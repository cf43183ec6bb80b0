"""Configuration: one pydantic-settings class, read from the environment and `.env`.

Every knob has a default; durations carry their unit in the name (`_S`, `_MS`). Reading the
settings never connects to anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from neondb.errors import ConfigurationError

Driver = Literal["asyncpg", "psycopg"]
PoolerMode = Literal["auto", "none", "transaction"]


class DatabaseSettings(BaseSettings):
    """The `DB_*` and `DATABASE_*` environment variables (see the README's table)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
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


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Read settings, turning pydantic's error into one that names each variable and its form."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper() or "settings"
            secret = any(word in name for word in ("URL", "SECRET", "PASSWORD"))
            shown = "" if secret else f" (got {err.get('input')!r:.60})"
            problems.append(f"{name}: {err['msg']}{shown}")
        raise ConfigurationError("bad configuration: " + "; ".join(problems)) from None
