"""neondb.errors: the error tree, its HTTP figures, and the mapping from driver errors."""

from __future__ import annotations

import asyncio
import pickle
import ssl

import psycopg
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
from neondb.errors import (
    classify,
    is_login_rejected,
    is_transient,
    retry_after_header,
    sqlstate_of,
)


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
        psycopg.OperationalError("server closed the connection unexpectedly"),
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
        # An app's own error quoting a client's words is not the database's.
        ValueError("too many connections"),
        RuntimeError("server closed the connection unexpectedly"),
    ],
)
def test_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_classify() -> None:
    assert isinstance(classify(sa_exc.TimeoutError("QueuePool limit")), PoolExhaustedError)
    assert isinstance(classify(wrapped(PgError("57014"))), QueryTimeoutError)
    assert type(classify(TimeoutError())) is QueryTimeoutError
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


def test_a_timeout_means_different_things_for_reads_and_writes() -> None:
    # The server cancelled the statement (57014): it did not happen, read or write.
    for writing in (False, True):
        assert type(classify(wrapped(PgError("57014")), writing=writing)) is QueryTimeoutError
    # The client's backstop gave up waiting: a write may still commit on the server.
    write = classify(TimeoutError(), writing=True)
    assert type(write) is WriteOutcomeUnknownError
    assert write.status_code == 503
    assert isinstance(write.orig, TimeoutError)
    read = classify(TimeoutError(), writing=False)
    assert type(read) is QueryTimeoutError
    assert read.status_code == 504
    # Pool exhaustion sent nothing: busy, whatever the statement.
    assert type(classify(sa_exc.TimeoutError("QueuePool"), writing=True)) is PoolExhaustedError


# libpq reports a refused connection with no SQLSTATE: its words are all there is.
LIBPQ = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '


@pytest.mark.parametrize(
    "words",
    [
        'password authentication failed for user "alex"',
        'role "alex" is not permitted to log in',
        'role "nobody" does not exist',
        'database "nowhere" does not exist',
        'no pg_hba.conf entry for host "127.0.0.1", user "alex", database "app", no encryption',
    ],
)
def test_refused_login_without_sqlstate(words: str) -> None:
    exc = psycopg.OperationalError(LIBPQ + words)
    assert sqlstate_of(exc) is None
    assert is_login_rejected(exc)
    assert is_login_rejected(wrapped(exc))
    assert not is_transient(exc)
    mapped = classify(wrapped(exc), writing=True)
    assert type(mapped) is DatabaseUnavailableError
    assert mapped.transient is False
    assert not is_transient(mapped)
    assert mapped.status_code == 503


@pytest.mark.parametrize(
    "exc",
    [
        PgError("28P01", "password authentication failed"),
        PgError("28000", "role is not permitted to log in"),
        PgError("3D000", "database does not exist"),
    ],
)
def test_refused_login_with_sqlstate(exc: BaseException) -> None:
    assert is_login_rejected(exc)
    mapped = classify(wrapped(exc))
    assert type(mapped) is DatabaseUnavailableError
    assert mapped.transient is False


@pytest.mark.parametrize(
    "words",
    [
        'FATAL:  too many connections for role "alex"',
        'FATAL:  too many connections for database "app"',
        "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
        'could not translate host name "ep-x.neon.tech" to address: Name or service not known',
        "failed to resolve host 'ep-x.neon.tech'",
        "connect to 10.0.0.1 port 5432 failed: No route to host",
        "connect to 10.0.0.1 port 5432 failed: Network is unreachable",
    ],
)
def test_libpq_outage_words_are_transient(words: str) -> None:
    """What the connection opener goes by: `is_transient` (retried, counted by the
    breaker, start-up waits)."""
    assert is_transient(psycopg.OperationalError(f"connection failed: {words}"))


def test_libpq_too_many_clients_is_transient() -> None:
    exc = psycopg.OperationalError(LIBPQ + "sorry, too many clients already")
    assert is_transient(exc)
    assert type(classify(wrapped(exc))) is DatabaseUnavailableError


@pytest.mark.parametrize(
    "words",
    ['too many connections for role "alex"', 'too many connections for database "app"'],
)
def test_classify_keeps_too_many_connections_transient(words: str) -> None:
    exc = psycopg.OperationalError(LIBPQ + words)
    assert not is_login_rejected(exc)
    mapped = classify(wrapped(exc))
    assert type(mapped) is DatabaseUnavailableError
    assert mapped.transient is True


def test_unavailable_transient_flag() -> None:
    down = DatabaseUnavailableError("down")
    assert down.transient is True
    assert is_transient(down)
    refused = DatabaseUnavailableError("refused")
    refused.transient = False
    assert not is_transient(refused)
    assert refused.status_code == 503
    assert DatabaseUnavailableError("again").transient is True  # per instance, not the class


class _CostlyToPrint(Exception):
    """An app's exception whose text is expensive to build (a web framework's validation
    error formats the whole rejected body)."""

    def __init__(self) -> None:
        super().__init__(["a" * 10] * 1000)

    def __str__(self) -> str:
        raise AssertionError("str() was called")


def test_classifying_never_formats_an_exception() -> None:
    exc = _CostlyToPrint()
    assert classify(exc) is None
    assert classify(exc, writing=True) is None
    assert not is_transient(exc)
    wrapped = RuntimeError("while handling")
    wrapped.__cause__ = exc
    assert classify(wrapped) is None


def test_an_app_error_quoting_outage_words_is_not_an_outage() -> None:
    """A 422 that echoes a body holding "57P03 the database system is starting up" or
    "too many connections" stays the app's error, never a 503."""
    for words in ("the database system is starting up", 'FATAL: too many connections for role "a"'):
        assert classify(ValueError(words), writing=True) is None
        assert not is_login_rejected(ValueError(f"FATAL: password authentication failed {words}"))
