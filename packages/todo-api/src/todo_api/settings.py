"""Settings of the service: neondb's `DB_*` variables plus auth and serving."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from neondb import ConfigurationError, DatabaseSettings

__all__ = ["AppSettings"]


class AppSettings(DatabaseSettings):
    """`DATABASE_URL`, `DB_*` (see neondb), and:

    * `AUTH_SECRET`: HS256 key for bearer tokens; in development a random one is generated
      once and kept in `DB_DATA_DIR/auth_secret` (mode 0600);
    * `AUTH_JWKS_URL`: the identity provider's JWKS (EdDSA, RS256, ES256... tokens);
    * `AUTH_AUDIENCE` / `AUTH_ISSUER`: when set, tokens must carry this `aud` / `iss`;
    * `APP_ENV`: `production` refuses to start without `AUTH_SECRET` or `AUTH_JWKS_URL`,
      and without `DATABASE_URL` (the embedded server is for development);
    * `APP_LOG_FORMAT` / `APP_LOG_LEVEL`: `text` or `json` lines, and the level;
    * `APP_ACCESS_LOG`: a line per request (default: on in development, off in production);
    * `APP_MAX_BODY_BYTES`: larger request bodies are a 413, refused while read (1 MiB);
    * `APP_USER_MAX_CONCURRENCY` / `APP_USER_QUEUE_TIMEOUT_S`: one user's share of the pool
      (requests at once) and how long the excess waits for it before a 429;
    * `APP_TELEMETRY`: FastAPI's native OpenTelemetry instrumentation (default off);
    * `HOST` / `PORT`: where `todo-api serve` listens.
    """

    def check_production(self) -> None:
        """Raise ConfigurationError when APP_ENV=production lacks what only development may
        go without: a database URL. (Keys are checked by `Authenticator.from_settings`.)
        An empty variable counts as unset, so `DATABASE_URL=` is refused here rather than
        quietly starting the embedded server."""
        if self.app_env == "production" and self.database_url is None:
            raise ConfigurationError(
                "APP_ENV=production needs DATABASE_URL: the embedded server is for development"
            )

    @property
    def user_max_concurrency(self) -> int:
        """Requests one user may run at once (0: no limit); unset, a quarter of the pool."""
        if self.app_user_max_concurrency is None:
            return max(1, self.db_pool_max // 4)
        return self.app_user_max_concurrency

    @property
    def access_log(self) -> bool:
        if self.app_access_log is None:
            return self.app_env == "development"
        return self.app_access_log

    auth_secret: SecretStr | None = Field(default=None, description="HS256 signing key")
    auth_jwks_url: str | None = Field(default=None, description="JWKS URL of the issuer")
    auth_audience: str | None = Field(default=None, description="required `aud` claim")
    auth_issuer: str | None = Field(default=None, description="required `iss` claim")
    auth_leeway_s: float = Field(default=30.0, ge=0, le=600, description="clock skew allowed")
    app_env: Literal["development", "production"] = "development"
    app_log_format: Literal["text", "json"] = Field(
        default="text", description="log lines: readable text, or JSON (one object per line)"
    )
    app_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    app_access_log: bool | None = Field(
        default=None,
        description="one line per request (never the query's values); unset: on in "
        "development, off in production",
    )
    app_max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="request bodies larger than this many bytes are refused (413) while "
        "they are read, before any parsing; the largest legal body (a message) is about "
        "130 KB as UTF-8, 390 KB with every character \\u-escaped",
    )
    app_user_max_concurrency: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="requests one user may run at once (each holds a pooled connection); "
        "unset: a quarter of DB_POOL_MAX (at least 1); 0: no per-user limit",
    )
    app_user_queue_timeout_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="seconds a user's request over that share waits for one of the user's "
        "slots before a 429 with Retry-After; 0: refuse at once",
    )
    app_telemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry spans, metrics and logs (for an app "
        "that sets up an OpenTelemetry SDK); off, it costs nothing per request",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
