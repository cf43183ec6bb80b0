"""neondb.errors: the error tree, its HTTP figures, and the mapping from driver errors."""

from __future__ import annotations

import asyncio
import pickle
import ssl

import pytest
import sqlalchemy.exc as sa_exc

from neondb import (
    CircuitOpenError,
    ConfigurationError,
    DatabaseUnavailableError,
    NeonDBError,
    PoolExhaustedError,
    QueryTimeoutError,
    WriteOutcomeUnknownError,
)
from neondb.errors import classify, is_transient, retry_after_header, sqlstate_of


class PgError(Exception):
    """Stands in for a driver exception carrying a SQLSTATE (asyncpg and psycopg both use
    the attribute `sqlstate`)."""

    def __init__(self, sqlstate: str, message: str = "server said no") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def wrapped(orig: BaseException) -> sa_exc.DBAPIError:
    """As SQLAlchemy hands a driver error to the caller."""
    return sa_exc.DBAPIError.instance("SELECT 1", None, orig, Exception)  # type: ignore[arg-type]


def test_hierarchy_keeps_existing_handlers_working() -> None:
    assert issubclass(ConfigurationError, ValueError)
    for cls in (DatabaseUnavailableError, CircuitOpenError, PoolExhaustedError, QueryTimeoutError):
        assert issubclass(cls, sa_exc.OperationalError)
        assert issubclass(cls, NeonDBError)
    assert issubclass(PoolExhaustedError, sa_exc.TimeoutError)
    assert issubclass(WriteOutcomeUnknownError, DatabaseUnavailableError)
    assert issubclass(CircuitOpenError, DatabaseUnavailableError)


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (DatabaseUnavailableError("down"), 503, "2"),
        (CircuitOpenError("open", retry_after_s=7.2), 503, "8"),
        (CircuitOpenError("open", retry_after_s=0.001), 503, "1"),
        (PoolExhaustedError("busy"), 503, "1"),
        (WriteOutcomeUnknownError("lost"), 503, "2"),
        (QueryTimeoutError("slow"), 504, "1"),
        (ConfigurationError("bad"), 500, "1"),
    ],
)
def test_status_and_retry_after(error: NeonDBError, status: int, retry_after: str) -> None:
    assert error.status_code == status
    assert retry_after_header(error) == retry_after
    detail = error.public_detail
    assert detail
    assert "\n" not in detail


def test_errors_survive_pickling_with_their_message() -> None:
    for err in (DatabaseUnavailableError("down"), QueryTimeoutError("slow")):
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err)
        assert str(again) == str(err)


def test_sqlstate_is_found_anywhere_in_the_chain() -> None:
    assert sqlstate_of(wrapped(PgError("57014"))) == "57014"
    outer = RuntimeError("outer")
    outer.__cause__ = PgError("57P01")
    assert sqlstate_of(outer) == "57P01"
    assert sqlstate_of(ValueError("nothing")) is None


@pytest.mark.parametrize(
    "exc",
    [
        PgError("57P01"),  # terminated by an administrator / Neon suspend
        PgError("08006"),  # connection failure
        PgError("53300"),  # too many connections
        PgError("XX000", "Couldn't connect to compute node"),
        ConnectionResetError(),
        ConnectionRefusedError(),
        asyncio.IncompleteReadError(b"", 10),
        Exception("server closed the connection unexpectedly"),
        DatabaseUnavailableError("down"),
    ],
)
def test_transient(exc: BaseException) -> None:
    assert is_transient(exc)
    if not isinstance(exc, NeonDBError):
        assert is_transient(wrapped(exc))  # as SQLAlchemy hands it over


@pytest.mark.parametrize(
    "exc",
    [
        PgError("23505"),  # unique violation: the caller's own
        PgError("42601"),  # syntax error
        PgError("28P01"),  # wrong password: retrying does not help
        PgError("57014"),  # a timeout is not "unreachable"
        TimeoutError(),
        ssl.SSLCertVerificationError("certificate verify failed"),
        WriteOutcomeUnknownError("lost"),  # never replayed
        CircuitOpenError("open", retry_after_s=1),  # fail fast, no retry
        ValueError("bad"),
    ],
)
def test_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_classify() -> None:
    assert isinstance(classify(sa_exc.TimeoutError("QueuePool limit")), PoolExhaustedError)
    assert isinstance(classify(wrapped(PgError("57014"))), QueryTimeoutError)
    assert isinstance(classify(TimeoutError()), QueryTimeoutError)
    lost = wrapped(PgError("57P01"))
    assert type(classify(lost)) is DatabaseUnavailableError
    assert isinstance(classify(lost, writing=True), WriteOutcomeUnknownError)
    assert classify(wrapped(PgError("23505"))) is None
    assert classify(ValueError("not ours")) is None
    own = QueryTimeoutError("slow")
    assert classify(own) is own


def test_mapped_errors_keep_the_original_and_hide_it_from_clients() -> None:
    orig = wrapped(PgError("57P01", "terminating connection due to administrator command"))
    mapped = classify(orig)
    assert isinstance(mapped, DatabaseUnavailableError)
    assert mapped.orig is orig
    assert "administrator" not in mapped.public_detail
