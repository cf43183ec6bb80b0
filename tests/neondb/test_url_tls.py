"""The Neon console string against a real TLS + SCRAM server (the `tls_server` fixture), with
both drivers through `neondb.Database`.

The server's only pg_hba line is `hostssl all all 127.0.0.1/32 scram-sha-256`: every
successful connection is TLS with SCRAM. libpq with `channel_binding=require` completes the
login only with SCRAM-SHA-256-PLUS, so a psycopg success is proof of channel binding; asyncpg
cannot bind channels and must verify the certificate instead (verify-full).
"""

from __future__ import annotations

import logging
import ssl
import time

import pytest
from neondb_support import TLS_DATABASE, TLS_PASSWORD, TLS_USER, TLSServer, make_settings
from sqlalchemy import text

from neondb import Database, DatabaseUnavailableError
from neondb.errors import exception_chain

SSL_ROW = text(
    "SELECT s.ssl, current_user, current_database() FROM pg_stat_ssl s "
    "WHERE s.pid = pg_backend_pid()"
)


def chain_text(exc: BaseException) -> str:
    return "\n".join(f"{e!s} {e!r}" for e in exception_chain(exc))


async def connect_and_describe(db: Database) -> tuple[bool, str, str]:
    await db.start()
    async with db.read_session() as s:
        ssl_on, user, database = (await s.execute(SSL_ROW)).one()
    return bool(ssl_on), str(user), str(database)


async def test_console_string_with_psycopg_uses_tls_and_channel_binding(
    tls_server: TLSServer, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(make_settings(tls_server.url(), db_driver="psycopg"))
    try:
        assert await connect_and_describe(db) == (True, TLS_USER, TLS_DATABASE)
        async with db.read_session() as s:
            conn = await s.connection()
            raw = await conn.get_raw_connection()
            params = raw.driver_connection.info.get_parameters()  # type: ignore[union-attr]
        # libpq got channel_binding=require, and the login completed: SCRAM-SHA-256-PLUS.
        assert params["channel_binding"] == "require"
        assert params["sslmode"] == "require"
    finally:
        await db.stop()
    assert TLS_PASSWORD not in caplog.text


async def test_psycopg_verify_full_with_the_servers_ca(tls_server: TLSServer) -> None:
    url = tls_server.url(
        f"sslmode=verify-full&channel_binding=require&sslrootcert={tls_server.ca_file}"
    )
    db = Database(make_settings(url, db_driver="psycopg"))
    try:
        assert await connect_and_describe(db) == (True, TLS_USER, TLS_DATABASE)
    finally:
        await db.stop()


async def test_console_string_with_asyncpg_verifies_the_certificate_against_sslrootcert(
    tls_server: TLSServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = tls_server.url(
        f"sslmode=require&channel_binding=require&sslrootcert={tls_server.ca_file}"
    )
    db = Database(make_settings(url, db_driver="asyncpg"))
    try:
        with caplog.at_level(logging.WARNING, logger="neondb"):
            assert await connect_and_describe(db) == (True, TLS_USER, TLS_DATABASE)
    finally:
        await db.stop()
    assert "verify-full" in caplog.text  # it says what it did instead of channel binding
    assert TLS_PASSWORD not in caplog.text


@pytest.mark.parametrize("rootcert", ["none", "other CA"])
async def test_asyncpg_with_channel_binding_fails_on_an_untrusted_certificate(
    tls_server: TLSServer, rootcert: str, caplog: pytest.LogCaptureFixture
) -> None:
    """channel_binding=require is upgraded to verify-full, never silently weakened to
    encryption without verification: a certificate the client does not trust is refused."""
    query = "sslmode=require&channel_binding=require"
    if rootcert == "other CA":
        query += f"&sslrootcert={tls_server.other_ca_file}"
    db = Database(make_settings(tls_server.url(query), db_driver="asyncpg"))
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.start()
    elapsed = time.monotonic() - started
    assert db._engine is None  # start() stopped again
    # A certificate error is not transient: no retrying until DB_STARTUP_TIMEOUT_S.
    assert elapsed < 5
    err = info.value
    assert err.transient is False
    assert err.status_code == 503
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in exception_chain(err))
    assert "certificate verify failed" in str(err)  # says what to fix
    assert TLS_PASSWORD not in chain_text(err)
    assert TLS_PASSWORD not in caplog.text


async def test_asyncpg_sslmode_require_encrypts_without_verifying(tls_server: TLSServer) -> None:
    # libpq's meaning of `require` (no channel binding asked): TLS, certificate unchecked.
    db = Database(make_settings(tls_server.url("sslmode=require"), db_driver="asyncpg"))
    try:
        assert await connect_and_describe(db) == (True, TLS_USER, TLS_DATABASE)
    finally:
        await db.stop()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_asyncpg_and_psycopg_verify_the_ip_address_san(
    tls_server: TLSServer, driver: str
) -> None:
    url = tls_server.url(f"sslmode=verify-full&sslrootcert={tls_server.ca_file}", host="127.0.0.1")
    db = Database(make_settings(url, db_driver=driver))
    try:
        assert await connect_and_describe(db) == (True, TLS_USER, TLS_DATABASE)
    finally:
        await db.stop()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_plain_connection_is_rejected_by_the_server(
    tls_server: TLSServer, driver: str
) -> None:
    db = Database(make_settings(tls_server.url("sslmode=disable"), db_driver=driver))
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match=r"no pg_hba\.conf entry") as info:
        await db.start()
    assert db._engine is None
    assert time.monotonic() - started < 5  # refused by the server: not retried
    assert info.value.transient is False
    message = chain_text(info.value)
    assert "no pg_hba.conf entry" in message
    assert "no encryption" in message
    assert TLS_PASSWORD not in message


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_wrong_password_fails_without_showing_either_password(
    tls_server: TLSServer, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "Wr0ng-pa55-c0ffee"
    url = tls_server.url(f"sslmode=verify-full&sslrootcert={tls_server.ca_file}", password=wrong)
    db = Database(make_settings(url, db_driver=driver))
    with caplog.at_level(logging.DEBUG, logger="neondb"):
        started = time.monotonic()
        with pytest.raises(
            DatabaseUnavailableError, match="password authentication failed"
        ) as info:
            await db.start()
        elapsed = time.monotonic() - started
    assert db._engine is None
    # A refused login is not transient: no retries, no waiting out DB_STARTUP_TIMEOUT_S.
    assert info.value.transient is False
    assert info.value.status_code == 503
    assert elapsed < db.settings.db_startup_timeout_s / 4
    message = chain_text(info.value)
    assert "password authentication failed" in message
    assert wrong not in message
    assert TLS_PASSWORD not in message
    assert wrong not in caplog.text
    assert wrong not in repr(db)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_password_as_a_query_parameter(
    tls_server: TLSServer, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """libpq's `?password=...` form logs in with both drivers, and is never shown."""
    url = (
        f"postgresql://{TLS_USER}@localhost:{tls_server.port}/{TLS_DATABASE}"
        f"?sslmode=verify-full&sslrootcert={tls_server.ca_file}&password={TLS_PASSWORD}"
    )
    db = Database(make_settings(url, db_driver=driver))
    try:
        with caplog.at_level(logging.DEBUG, logger="neondb"):
            assert await connect_and_describe(db) == (True, TLS_USER, TLS_DATABASE)
        assert TLS_PASSWORD not in repr(db)
    finally:
        await db.stop()
    assert "password=" in caplog.text  # the start-up line shows the URL, masked
    assert TLS_PASSWORD not in caplog.text
