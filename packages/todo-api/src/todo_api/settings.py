"""Settings of the service: neondb's `DB_*` variables plus auth and serving."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from neondb import DatabaseSettings

__all__ = ["AppSettings"]


class AppSettings(DatabaseSettings):
    """`DATABASE_URL`, `DB_*` (see neondb), and:

    * `AUTH_SECRET`: HS256 key for bearer tokens; in development a random one is generated
      once and kept in `DB_DATA_DIR/auth_secret` (mode 0600);
    * `AUTH_JWKS_URL`: the identity provider's JWKS (EdDSA, RS256, ES256... tokens);
    * `AUTH_AUDIENCE` / `AUTH_ISSUER`: when set, tokens must carry this `aud` / `iss`;
    * `APP_ENV`: `production` refuses to start without `AUTH_SECRET` or `AUTH_JWKS_URL`;
    * `APP_LOG_FORMAT` / `APP_LOG_LEVEL`: `text` or `json` lines, and the level;
    * `APP_ACCESS_LOG`: a line per request (default: on in development, off in production);
    * `APP_TELEMETRY`: FastAPI's native OpenTelemetry instrumentation (default off);
    * `HOST` / `PORT`: where `todo-api serve` listens.
    """

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
    app_telemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry spans, metrics and logs (for an app "
        "that sets up an OpenTelemetry SDK); off, it costs nothing per request",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
