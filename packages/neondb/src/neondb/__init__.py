"""neondb: an async database layer for FastAPI on Neon serverless PostgreSQL.

Public surface: `Database` and its settings, the FastAPI wiring (`NeonDB` and the session
aliases), the error tree (see `neondb.errors`), URL parsing and migrations.

The core needs only SQLAlchemy, pydantic-settings and tenacity. The FastAPI wiring
(`NeonDB`, `ReadSession`, `AutocommitSession`, `DbSession`, `get_database`) comes with
`neondb[fastapi]` and `Migrations` with `neondb[migrations]`: they are imported on first
use, and an ImportError names the extra to install when it is missing.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from neondb.database import Database
from neondb.embedded import EmbeddedServer
from neondb.errors import (
    CircuitOpenError,
    ConfigurationError,
    DatabaseUnavailableError,
    NeonDBError,
    PoolExhaustedError,
    QueryTimeoutError,
    WriteOutcomeUnknownError,
)
from neondb.health import database_health
from neondb.logs import RequestContextMiddleware, current_request_id, logging_config
from neondb.replicas import primary_reads
from neondb.resilience import CircuitBreaker
from neondb.session import NeonSession
from neondb.settings import DatabaseSettings, load_settings
from neondb.url import DatabaseURL, parse_url

if TYPE_CHECKING:
    from neondb.body_limit import BodyLimitMiddleware
    from neondb.fastapi import AutocommitSession, DbSession, NeonDB, ReadSession, get_database
    from neondb.migrations import MigrationDriftError, Migrations

__all__ = [
    "AutocommitSession",
    "BodyLimitMiddleware",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "Database",
    "DatabaseSettings",
    "DatabaseURL",
    "DatabaseUnavailableError",
    "DbSession",
    "EmbeddedServer",
    "MigrationDriftError",
    "Migrations",
    "NeonDB",
    "NeonDBError",
    "NeonSession",
    "PoolExhaustedError",
    "QueryTimeoutError",
    "ReadSession",
    "RequestContextMiddleware",
    "WriteOutcomeUnknownError",
    "current_request_id",
    "database_health",
    "get_database",
    "load_settings",
    "logging_config",
    "parse_url",
    "primary_reads",
]

# Names whose modules need an extra: imported when first asked for.
_LAZY = {
    "AutocommitSession": "neondb.fastapi",
    "BodyLimitMiddleware": "neondb.body_limit",
    "DbSession": "neondb.fastapi",
    "NeonDB": "neondb.fastapi",
    "ReadSession": "neondb.fastapi",
    "get_database": "neondb.fastapi",
    "MigrationDriftError": "neondb.migrations",
    "Migrations": "neondb.migrations",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'neondb' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
