"""The errors this layer raises, and the one mapping from driver errors to them.

Each error subclasses the SQLAlchemy error an existing handler would already catch, so
adopting neondb breaks no `except OperationalError:` clause::

    NeonDBError                          base: `status_code`, `retry_after_s`, `public_detail`
    ├── ConfigurationError (ValueError)  bad setting or URL; raised before any connection
    ├── DatabaseUnavailableError         503: the database cannot be reached now
    │   │   (sqlalchemy.exc.OperationalError)
    │   ├── CircuitOpenError             503 at once, Retry-After = the cool-down left
    │   ├── PoolExhaustedError           503 after DB_POOL_TIMEOUT_S
    │   │       (also sqlalchemy.exc.TimeoutError)
    │   └── WriteOutcomeUnknownError     503: the connection died while a write was in
    │                                    flight; it may or may not have committed, and it
    │                                    is never replayed
    └── QueryTimeoutError                504: statement_timeout (SQLSTATE 57014) or the
            (sqlalchemy.exc.OperationalError)  client-side backstop

`classify()` turns any driver or SQLAlchemy exception into one of these, or returns None
for errors that are the caller's own (constraint violations, bad SQL): those stay as they are.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import sqlalchemy.exc as sa_exc

__all__ = [
    "CircuitOpenError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "NeonDBError",
    "PoolExhaustedError",
    "QueryTimeoutError",
    "WriteOutcomeUnknownError",
    "classify",
    "exception_chain",
    "is_login_rejected",
    "is_timeout",
    "is_transient",
    "is_unresolvable",
    "sqlstate_of",
]

# SQLSTATEs that mean "the server or the path to it is not there now": try again later.
TRANSIENT_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: terminated by pg_terminate_backend, or Neon suspending
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up or shutting down
        "53300",  # too_many_connections
        "53400",  # configuration_limit_exceeded
        "XX000",  # Neon's proxy: "Couldn't connect to compute node" arrives as internal_error
    }
)
# libpq reports a failed connection attempt without a SQLSTATE: only its words say why.
LOGIN_REJECTED_MESSAGES = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "is not permitted to log in",
    "does not exist",  # role "x" / database "x" does not exist
    "authentication failed",
    "scram exchange",
    "channel binding",
)
TIMEOUT_SQLSTATE = "57014"  # query_canceled: statement_timeout fired
TRANSIENT_MESSAGES = (
    "couldn't connect to compute node",
    "connection is closed",
    "connection was closed",
    "server closed the connection",
    "the database system is starting up",
    "the database system is shutting down",
    # 57P03 during crash recovery; libpq reports connection failures without a SQLSTATE.
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "the database system is in recovery mode",
    "terminating connection",
    "connection refused",
    "connection reset",
    "broken pipe",
    "consuming input failed",
    "connection timeout expired",
    "too many connections",
    "too many clients",
    "remaining connection slots are reserved",
    "failed to resolve host",
    "could not translate host name",
    "no route to host",
    "network is unreachable",
    # asyncpg, when the server's goodbye (FATAL 57P01, say) reached an idle connection just
    # before the next statement: its protocol is still consuming the error, the socket not
    # yet seen closed (InternalClientError "cannot switch to state N; another operation...").
    "cannot switch to state",
)


class NeonDBError(Exception):
    """Base of every error this layer raises."""

    status_code: int = 503
    retry_after_s: float = 1.0

    @property
    def public_detail(self) -> str:
        """One line, safe for a client: no SQL, no parameters, no credentials."""
        return "database unavailable, retry later"


class ConfigurationError(NeonDBError, ValueError):
    """A setting or URL is wrong; the message names it and the expected form."""

    status_code = 500

    @property
    def public_detail(self) -> str:
        return "database misconfigured"


class _OperationalMixin(NeonDBError, sa_exc.OperationalError):
    def __init__(self, message: str, orig: BaseException | None = None, **kw: Any) -> None:
        sa_exc.OperationalError.__init__(self, None, None, orig or Exception(message))
        self.message = message
        for key, value in kw.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:  # pickling: only the message survives
        return (type(self), (self.message,))


class DatabaseUnavailableError(_OperationalMixin):
    """The database cannot be reached now (down, waking, network), or refuses this app
    (`transient` False: a refused login or certificate, which waiting will not heal)."""

    retry_after_s = 2.0
    transient: bool = True


class CircuitOpenError(DatabaseUnavailableError):
    """Too many connection failures in a row: failing fast until the cool-down ends."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class PoolExhaustedError(DatabaseUnavailableError, sa_exc.TimeoutError):
    """No pooled connection became free within DB_POOL_TIMEOUT_S."""

    retry_after_s = 1.0

    @property
    def public_detail(self) -> str:
        return "database busy, retry later"


class WriteOutcomeUnknownError(DatabaseUnavailableError):
    """The connection was lost while a write was in flight. It may have committed; it is not
    replayed. A client that must know retries with its own idempotency check."""

    @property
    def public_detail(self) -> str:
        return "database connection lost during a write; its outcome is unknown"


class QueryTimeoutError(_OperationalMixin):
    """A statement ran past DB_STATEMENT_TIMEOUT_S."""

    status_code = 504
    retry_after_s = 1.0

    @property
    def public_detail(self) -> str:
        return "database statement timed out"


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception behind it (SQLAlchemy's `orig`, causes, contexts), once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend([getattr(e, "orig", None), e.__cause__, e.__context__])


def _message(exc: BaseException) -> str:
    """An exception's message, lower-cased, from its string arguments, where drivers, the
    OS and libpq put it. Never `str(exc)`: that can cost anything (a web framework's
    validation error formats the whole request body it rejected), and these checks run on
    every exception a session sees, the app's own included."""
    return " ".join(a for a in exc.args if isinstance(a, str)).lower()


_DRIVER_PACKAGES = frozenset({"asyncpg", "psycopg", "sqlalchemy"})


def _from_driver(exc: BaseException) -> bool:
    """Raised by a driver or SQLAlchemy: only their messages are read as the database's
    words. An app's own error that quotes a client's input ("too many connections" in a
    request body) must not pass for an outage."""
    return type(exc).__module__.partition(".")[0] in _DRIVER_PACKAGES


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE anywhere in the chain (asyncpg: `sqlstate`, psycopg: `sqlstate`)."""
    for e in exception_chain(exc):
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean 'the database is not reachable now': worth a retry when
    the operation is safe to repeat."""
    if isinstance(exc, DatabaseUnavailableError):
        return exc.transient and not isinstance(exc, WriteOutcomeUnknownError | CircuitOpenError)
    code = sqlstate_of(exc)
    if code is not None:
        return code.startswith("08") or code in TRANSIENT_SQLSTATES
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in exception_chain(exc)):
        # An OSError, but a wrong certificate (or a man in the middle) stays wrong on retry.
        return False
    for e in exception_chain(exc):
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, ConnectionError | asyncio.IncompleteReadError):
            return True
        if isinstance(e, OSError) and not isinstance(e, TimeoutError):
            return True
        if type(e).__name__ in {"ConnectionDoesNotExistError", "ConnectionFailureError"}:
            return True
        if _from_driver(e) and any(m in _message(e) for m in TRANSIENT_MESSAGES):
            return True
    return False


def is_login_rejected(exc: BaseException) -> bool:
    """The server refused the login or the database (wrong password, no such role or
    database, no pg_hba entry): permanent until someone fixes the configuration."""
    code = sqlstate_of(exc)
    if code is not None:
        return code.startswith("28") or code == "3D000"
    return any(
        _from_driver(e)
        and "fatal" in (text := _message(e))
        and any(m in text for m in LOGIN_REJECTED_MESSAGES)
        for e in exception_chain(exc)
    )


def is_unresolvable(exc: BaseException) -> bool:
    """The host name does not resolve (asyncpg: socket.gaierror; libpq: its message)."""
    return any(
        isinstance(e, socket.gaierror)
        or any(m in _message(e) for m in ("failed to resolve host", "could not translate host"))
        for e in exception_chain(exc)
    )


def is_timeout(exc: BaseException) -> bool:
    """A connect or statement wait that ran out (asyncpg: TimeoutError; libpq: a message)."""
    return any(
        isinstance(e, TimeoutError) or "timeout expired" in _message(e)
        for e in exception_chain(exc)
    )


def classify(exc: BaseException, *, writing: bool = False) -> NeonDBError | None:
    """Map an exception to this layer's error, or None when it is the caller's own error.

    `writing`: the failed operation may have changed data, so a lost connection means the
    outcome is unknown rather than 'did not happen'.
    """
    if isinstance(exc, NeonDBError):
        return exc
    if isinstance(exc, sa_exc.TimeoutError):
        return PoolExhaustedError("no database connection free within the pool timeout")
    if sqlstate_of(exc) == TIMEOUT_SQLSTATE:
        # The server cancelled the statement: it did not happen, whatever it was.
        return QueryTimeoutError("statement timed out", orig=exc)
    if isinstance(exc, TimeoutError):
        # The client gave up waiting: a write may still have committed on the server.
        if writing:
            return WriteOutcomeUnknownError("no answer to a write within the backstop", orig=exc)
        return QueryTimeoutError("statement timed out (client backstop)", orig=exc)
    if is_transient(exc):
        if writing:
            return WriteOutcomeUnknownError("connection lost during a write", orig=exc)
        return DatabaseUnavailableError("database unavailable", orig=exc)
    if is_login_rejected(exc):
        # The client can do nothing about it: a 503, not a 500; the log names the cause.
        err = DatabaseUnavailableError(f"database refused the login: {sqlstate_of(exc)}", orig=exc)
        err.transient = False
        return err
    return None


def retry_after_header(exc: NeonDBError) -> str:
    """Retry-After wants whole seconds; never 0, so a client does not spin."""
    return str(max(1, math.ceil(exc.retry_after_s)))
