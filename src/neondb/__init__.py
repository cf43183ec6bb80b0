"""neondb: an async database layer for FastAPI on Neon serverless PostgreSQL.

Public surface: `Database` and its settings, the FastAPI wiring (`NeonDB` and the session
aliases), the error tree (see `neondb.errors`), URL parsing and migrations.
"""

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
from neondb.fastapi import AutocommitSession, DbSession, NeonDB, ReadSession, get_database
from neondb.health import database_health
from neondb.migrations import MigrationDriftError, Migrations
from neondb.resilience import CircuitBreaker
from neondb.session import NeonSession
from neondb.settings import DatabaseSettings, load_settings
from neondb.url import DatabaseURL, parse_url

__all__ = [
    "AutocommitSession",
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
    "WriteOutcomeUnknownError",
    "database_health",
    "get_database",
    "load_settings",
    "parse_url",
]
