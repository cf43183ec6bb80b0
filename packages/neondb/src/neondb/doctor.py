"""`neondb doctor`: what the layer makes of a URL, and what the server says back.

Checks, in order: the URL parses and translates for the driver (secrets masked); a
connection opens (time to connect); TLS in use; the pooler mode assumed; the server's
`statement_timeout` as this layer's sessions see it; round trips per single-statement read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from neondb.database import Database
from neondb.errors import NeonDBError
from neondb.settings import DatabaseSettings

__all__ = ["Finding", "diagnose"]


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, check: str, ok: bool, detail: str) -> None:
        self.findings.append(Finding(check, ok, detail))

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)


async def diagnose(settings: DatabaseSettings) -> Report:
    report = Report()
    db = Database(settings.model_copy(update={"db_pool_min": 1}), name="doctor")
    started = time.perf_counter()
    try:
        await db.start(wait_s=settings.db_connect_timeout_s)
    except NeonDBError as e:
        report.add("connect", False, f"{type(e).__name__}: {e}")
        return report
    try:
        assert db.url is not None
        report.add("url", True, db.url.display)
        report.add("driver", True, db.driver)
        report.add(
            "pooler",
            True,
            "transaction pooler (no prepared statements, SET LOCAL timeouts)"
            if db.behind_pooler()
            else "direct endpoint",
        )
        report.add("connect", True, f"ready in {(time.perf_counter() - started) * 1000:.0f} ms")
        async with db.read_session() as s:
            row: Any = (
                await s.execute(
                    text(
                        "SELECT version(), current_setting('statement_timeout'), "
                        "coalesce((SELECT ssl FROM pg_stat_ssl "
                        "WHERE pid = pg_backend_pid()), false)"
                    )
                )
            ).one()
        report.add("server", True, str(row[0]).split(" on ")[0])
        want = settings.db_statement_timeout_s
        report.add(
            "statement_timeout",
            not want or row[1] not in ("0", "0ms"),
            f"{row[1]} (configured {want:g} s)",
        )
        tls_needed = db.url.sslmode not in ("disable", "allow", "prefer")
        report.add("tls", bool(row[2]) or not tls_needed, "on" if row[2] else "off")
        report.add("latency", True, f"{await db.ping():.1f} ms per SELECT 1")
    finally:
        await db.stop()
    return report
