"""The Neon console string against a real TLS + SCRAM server (the `tls_server` fixture), with
both drivers through `neondb.Database`; host lists, `?host=&port=` and `sslrootcert=system`
against it and against the plain test server behind a proxy.

The server's only pg_hba line is `hostssl all all 127.0.0.1/32 scram-sha-256`: every
successful connection is TLS with SCRAM. libpq with `channel_binding=require` completes the
login only with SCRAM-SHA-256-PLUS, so a psycopg success is proof of channel binding; asyncpg
cannot bind channels and must verify the certificate instead (verify-full).
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from pathlib import Path

import pytest
from neondb_support import (
    DRIVERS,
    TLS_DATABASE,
    TLS_PASSWORD,
    TLS_USER,
    TLSServer,
    free_port,
    make_settings,
    open_database,
)
from sqlalchemy import text

from neondb import ConfigurationError, Database, DatabaseUnavailableError, parse_url
from neondb.errors import exception_chain
from neondb.proxy import FaultProxy

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


# Hosts and ports as libpq reads them, against real servers: server B is the plain test
# server (no TLS), reached only through a FaultProxy on 127.0.0.1 (`proxy`); a free port with
# nothing listening stands for a host that is down. The authority is left empty, so a
# driver that dropped ?host=&port= would go to its default (127.0.0.1:5432, local sockets).

WHO = text(
    "SELECT current_database(), current_setting('application_name'), "
    "inet_server_port() IS NULL"  # B is reached by the proxy over its Unix socket
)


async def where_it_landed(url: str, driver: str) -> tuple[str, str, bool]:
    async with open_database(url, db_driver=driver) as db, db.read_session() as s:
        database, application, via_socket = (await s.execute(WHO)).one()
    return str(database), str(application), bool(via_socket)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_host_and_port_in_the_query_with_an_empty_authority_reach_that_server(
    neondb_database_url: str, proxy: FaultProxy, driver: str
) -> None:
    b = parse_url(neondb_database_url).url
    url = (
        f"postgresql://{b.username}@/{b.database}"
        f"?host=127.0.0.1&port={proxy.port}&sslmode=disable&application_name=via-query"
    )
    assert await where_it_landed(url, driver) == (b.database, "via-query", True)
    assert proxy.connections >= 1


@pytest.mark.parametrize("form", ["authority", "query lists", "query host, one port"])
@pytest.mark.parametrize("driver", DRIVERS)
async def test_host_lists_are_tried_in_order(
    neondb_database_url: str, proxy: FaultProxy, driver: str, form: str
) -> None:
    """The first host is down: both drivers go on to the second, as libpq does."""
    b = parse_url(neondb_database_url).url
    down = free_port()
    query = "sslmode=disable&application_name=listed&target_session_attrs=primary"
    url = {
        "authority": f"postgresql://{b.username}@127.0.0.1:{down},127.0.0.1:{proxy.port}"
        f"/{b.database}?{query}",
        "query lists": f"postgresql://{b.username}@/{b.database}"
        f"?host=127.0.0.1,localhost&port={down},{proxy.port}&{query}",
        # One port for every host, the authority's host overridden by the query's.
        "query host, one port": f"postgresql://{b.username}@192.0.2.1:{proxy.port}"
        f"/{b.database}?host=localhost,127.0.0.1&{query}",
    }[form]
    assert await where_it_landed(url, driver) == (b.database, "listed", True)
    assert proxy.connections >= 1


@pytest.mark.parametrize("driver", DRIVERS)
async def test_target_session_attrs_is_honoured_over_a_host_list(
    neondb_database_url: str, proxy: FaultProxy, driver: str
) -> None:
    """Both hosts are primaries: asking for a standby connects nowhere."""
    b = parse_url(neondb_database_url).url
    url = (
        f"postgresql://{b.username}@127.0.0.1:{proxy.port},localhost:{proxy.port}"
        f"/{b.database}?sslmode=disable&target_session_attrs=standby"
    )
    db = Database(
        make_settings(url, db_driver=driver, db_startup_timeout_s=2.0, db_retry_attempts=1)
    )
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.start()
    assert "standby" in chain_text(info.value)
    assert proxy.connections >= 2  # both were asked


@pytest.mark.parametrize(
    "query",
    [
        "host=127.0.0.1:{port}&host=localhost:{port}",  # SQLAlchemy's form; libpq: the last
        "host=127.0.0.1:{port}",  # libpq: one host name, "127.0.0.1:<port>"
        "host=,127.0.0.1&port={port}",  # an empty entry: libpq's default host
    ],
)
@pytest.mark.parametrize("driver", DRIVERS)
async def test_host_forms_libpq_reads_otherwise_connect_nowhere(
    neondb_database_url: str, proxy: FaultProxy, driver: str, query: str
) -> None:
    b = parse_url(neondb_database_url).url
    url = f"postgresql://{b.username}@/{b.database}?sslmode=disable&" + query.format(
        port=proxy.port
    )
    db = Database(make_settings(url, db_driver=driver))
    with pytest.raises(ConfigurationError, match="host"):
        await db.start()
    assert proxy.accepted == 0


# sslrootcert=system: verify-full with the system CAs. OpenSSL's system store is pointed at
# the test CA (SSL_CERT_FILE, which Python's ssl module and libpq both honour), or at an
# unrelated one.


@pytest.mark.parametrize("driver", DRIVERS)
async def test_sslrootcert_system_verifies_the_server_with_both_drivers(
    tls_server: TLSServer, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca_file))
    db = Database(make_settings(tls_server.url("sslrootcert=system"), db_driver=driver))
    try:
        assert await connect_and_describe(db) == (True, TLS_USER, TLS_DATABASE)
    finally:
        await db.stop()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_sslrootcert_system_refuses_a_certificate_the_system_does_not_trust(
    tls_server: TLSServer, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.other_ca_file))
    db = Database(make_settings(tls_server.url("sslrootcert=system"), db_driver=driver))
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.start()
    assert "certificate verify failed" in chain_text(info.value)
    assert TLS_PASSWORD not in chain_text(info.value)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_sslrootcert_system_never_falls_back_to_plain_text(
    neondb_database_url: str, proxy: FaultProxy, driver: str
) -> None:
    """Server B has no TLS. asyncpg used to get `prefer` here and log in in plain text."""
    b = parse_url(neondb_database_url).url
    url = f"postgresql://{b.username}@127.0.0.1:{proxy.port}/{b.database}?sslrootcert=system"
    db = Database(
        make_settings(url, db_driver=driver, db_startup_timeout_s=2.0, db_retry_attempts=1)
    )
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.start()
    assert re.search(r"SSL|TLS", chain_text(info.value))
    assert proxy.accepted >= 1  # it did try, and stopped at the TLS request


@pytest.mark.parametrize("driver", DRIVERS)
async def test_sslmode_require_with_sslrootcert_system_is_refused_before_connecting(
    tls_server: TLSServer, driver: str
) -> None:
    db = Database(
        make_settings(tls_server.url("sslmode=require&sslrootcert=system"), db_driver=driver)
    )
    with pytest.raises(ConfigurationError, match="sslmode=require with sslrootcert=system"):
        await db.start()


# TLS files


@pytest.mark.parametrize("driver", DRIVERS)
async def test_missing_sslcert_is_a_configuration_error_naming_it(
    tls_server: TLSServer, driver: str, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.crt"
    db = Database(
        make_settings(tls_server.url(f"sslmode=require&sslcert={missing}"), db_driver=driver)
    )
    with pytest.raises(ConfigurationError) as info:  # was a bare FileNotFoundError (asyncpg)
        await db.start()
    assert f"sslcert='{missing}'" in str(info.value)
    assert "does not exist" in str(info.value)


async def test_asyncpg_refuses_sslcert_it_would_ignore_with_sslmode_prefer(
    tls_server: TLSServer,
) -> None:
    url = tls_server.url(f"sslmode=prefer&sslcert={tls_server.ca_file}&sslkey={tls_server.ca_file}")
    db = Database(make_settings(url, db_driver="asyncpg"))
    with pytest.raises(ConfigurationError, match="asyncpg would ignore them"):
        await db.start()


async def test_unencoded_at_in_the_password_connects_nowhere(tls_server: TLSServer) -> None:
    at_password = TLS_PASSWORD.replace("pa55", "pa@55")
    url = f"postgresql://{TLS_USER}:{at_password}@localhost:{tls_server.port}/{TLS_DATABASE}"
    db = Database(make_settings(url))
    with pytest.raises(ConfigurationError) as info:
        await db.start()
    for part in at_password.split("@"):
        assert part not in str(info.value)
    assert "%40" in str(info.value)
