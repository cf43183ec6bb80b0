"""The doctor's migrations step: is the database at the app's Alembic head? With
`--migrations module:attr` (a `neondb.Migrations`), head is known; without it, the
revision in `alembic_version` is reported, if there is one."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from neondb.doctor.driver import Probe
from neondb.doctor.report import Report
from neondb.settings import DatabaseSettings

__all__ = ["check_migrations", "load_migrations"]


def load_migrations(spec: str) -> Any:
    """`module:attr` to the `neondb.Migrations` object it names; ValueError says why not."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--migrations {spec!r}: expected module:attr, e.g. app.models:MIGRATIONS")
    try:
        from neondb.migrations import Migrations
    except ImportError as e:
        raise ValueError(str(e)) from None
    try:
        obj: Any = import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--migrations {spec!r}: {e}") from None
    if not isinstance(obj, Migrations):
        raise ValueError(f"--migrations {spec!r} is a {type(obj).__name__}, not neondb.Migrations")
    return obj


async def _current(probe: Probe) -> list[str] | None:
    """The revisions in alembic_version (on the search path), None without the table."""
    (exists,) = await probe.row("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    (joined,) = await probe.row(
        "SELECT coalesce(string_agg(version_num, ',' ORDER BY version_num), '') "
        "FROM alembic_version"
    )
    return [r for r in str(joined).split(",") if r]


async def check_migrations(
    report: Report, probe: Probe, spec: str | None, settings: DatabaseSettings
) -> None:
    current = await _current(probe)
    shown = ", ".join(current) if current else "none"
    if spec is None:
        if current is None:
            report.skip("migrations", "no --migrations given and no alembic_version table")
        else:
            report.add(
                "migrations",
                "ok",
                f"database at revision {shown} (give --migrations module:attr to compare "
                "with head)",
                current=current,
            )
        return
    try:
        migrations = load_migrations(spec)
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(migrations.config())
        heads = sorted(script.get_heads())
        known = {r.revision for r in script.walk_revisions()}
    except Exception as e:  # an import error in the app's module, a broken script folder
        report.add(
            "migrations",
            "fail",
            f"cannot read the migrations: {e}",
            "check the --migrations argument (module:attr of a neondb.Migrations object) and "
            "that the module imports",
        )
        return
    data = {"current": current or [], "heads": heads}
    unknown = [r for r in current or [] if r not in known]
    if unknown:
        report.add(
            "migrations",
            "fail",
            f"database at revision {shown}, which these migrations do not have "
            f"(head {', '.join(heads)})",
            "the database was migrated by a newer release, or DATABASE_URL names another "
            "app's database: deploy the release that has this revision, or check the URL",
            data=data,
        )
    elif sorted(current or []) == heads:
        report.add("migrations", "ok", f"database at head ({', '.join(heads)})", data=data)
    else:
        on_start = settings.db_migrate_on_start
        report.add(
            "migrations",
            "warn" if on_start else "fail",
            f"database at revision {shown}, head is {', '.join(heads)}"
            + (" (DB_MIGRATE_ON_START: the app upgrades when it starts)" if on_start else ""),
            "upgrade it: the app's migrate command (todo_api: `todo-api db upgrade`), or "
            "start the app with DB_MIGRATE_ON_START=true",
            data=data,
        )
