"""What to do about an error a server (or pooler) sent while a client logged in."""

from __future__ import annotations

__all__ = ["login_fix"]


def login_fix(sqlstate: str | None, message: str, *, user: str, database: str) -> str:
    """The fix for a refused login, from its SQLSTATE, else its words (libpq reports a
    failed connection without a SQLSTATE; PgBouncer uses 08P01 for most refusals)."""
    text = message.lower()
    if sqlstate == "28P01" or "password authentication failed" in text:
        return (
            f"the password for role {user!r} is wrong: copy it again into DATABASE_URL (Neon: "
            "reset it under Roles), percent-encoding @ : / # ? in it"
        )
    if "channel binding" in text or "scram-sha-256-plus" in text:
        return (
            "channel_binding=require, but the server did not offer SCRAM channel binding "
            "(PgBouncer cannot bind channels): drop channel_binding=require for this endpoint "
            "and verify the certificate instead (sslmode=verify-full)"
        )
    if "pg_hba" in text:
        return (
            "the server's pg_hba.conf has no line for this client address, role, database and "
            "TLS setting: add one, or connect with TLS (sslmode=require) if it only has "
            "hostssl lines"
        )
    if (
        sqlstate == "3D000"
        or "no such database" in text
        or ("database" in text and "does not exist" in text)
    ):
        return (
            f"the database {database!r} does not exist: check the name after the host in "
            "DATABASE_URL (`psql -l` lists the databases; Neon's default is neondb)"
        )
    if "no such user" in text or ("role" in text and "does not exist" in text):
        return f"the role {user!r} does not exist: check the user name in DATABASE_URL"
    if sqlstate == "28000" or "not permitted to log in" in text:
        return f"the role {user!r} may not log in here: ask the database owner (LOGIN, CONNECT)"
    if sqlstate in ("53300", "53400") or "too many" in text or "connection slots" in text:
        return (
            "the server has no connection left: close idle clients, lower DB_POOL_MAX or the "
            "number of workers, or connect through a pooler (Neon: the -pooler host)"
        )
    if sqlstate == "57P03" or "starting up" in text or "shutting down" in text:
        return "the server is starting or stopping: wait a moment and run `neondb doctor` again"
    return "read the server's log for this login; the message above is the server's own"
