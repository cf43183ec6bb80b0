"""Optional parts and the extras that bring them.

`neondb` itself needs only SQLAlchemy, pydantic-settings and tenacity. Each other part names
its extra when its dependency is missing, so the fix is in the error message.
"""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["DRIVER_EXTRAS", "installed", "missing_extra"]

DRIVER_EXTRAS = {"asyncpg": "asyncpg", "psycopg": "psycopg"}


def missing_extra(extra: str, part: str) -> ImportError:
    """The ImportError for `part` when `neondb[extra]` is not installed."""
    return ImportError(
        f"{part} needs the neondb[{extra}] extra, which is not installed: "
        f"pip install 'neondb[{extra}]'",
        name=extra,
    )


def installed(module: str) -> bool:
    """True when `module` can be imported (without importing it)."""
    return find_spec(module) is not None
