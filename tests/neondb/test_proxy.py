"""neondb.proxy.FaultProxy: round-trip counting and fault injection, checked with a plain
psycopg connection through it."""

from __future__ import annotations

import time

import psycopg
import pytest
from neondb_support import proxied_url

from neondb.proxy import FaultProxy
from neondb.url import parse_url


def connect(proxy: FaultProxy, url: str, *, autocommit: bool = True) -> psycopg.Connection:
    conninfo = parse_url(proxied_url(proxy, url)).spec("psycopg", connect_timeout_s=5)
    return psycopg.connect(conninfo.kwargs["conninfo"], autocommit=autocommit)


def test_counts_round_trips_and_connections(proxy: FaultProxy, neondb_database_url: str) -> None:
    assert f":{proxy.port} ->" in repr(proxy)
    with connect(proxy, neondb_database_url) as conn:
        assert proxy.connections == 1
        proxy.reset_counts()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert proxy.round_trips == 1
        conn.execute("SELECT 2")
        conn.execute("SELECT 3")
        assert proxy.round_trips == 3
        assert proxy.connections == 0
    with connect(proxy, neondb_database_url, autocommit=False) as conn:
        proxy.reset_counts()
        conn.execute("SELECT 1")  # BEGIN goes first, on its own
        conn.commit()
        assert proxy.round_trips == 3


@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_refuse_and_reset_fail_new_connections_at_once(
    proxy: FaultProxy, neondb_database_url: str, mode: str
) -> None:
    with connect(proxy, neondb_database_url) as survivor:
        proxy.mode = mode  # type: ignore[assignment]
        assert mode in repr(proxy)
        proxy.reset_counts()
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            connect(proxy, neondb_database_url)
        assert time.monotonic() - started < 5
        assert proxy.accepted >= 1  # the attempt is counted, not forwarded
        assert proxy.connections == 0
        assert survivor.execute("SELECT 1").fetchone() == (1,)  # open ones go on
    proxy.mode = "pass"
    with connect(proxy, neondb_database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_drop_all_cuts_open_connections(proxy: FaultProxy, neondb_database_url: str) -> None:
    with connect(proxy, neondb_database_url) as conn:
        proxy.drop_all()
        time.sleep(0.1)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.closed or conn.broken
    with connect(proxy, neondb_database_url) as conn:  # new connections still pass
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_delay_is_added_each_way(proxy: FaultProxy, neondb_database_url: str) -> None:
    with connect(proxy, neondb_database_url) as conn:
        proxy.delay_s = 0.15
        started = time.monotonic()
        conn.execute("SELECT 1")
        elapsed = time.monotonic() - started
        proxy.delay_s = 0
    assert 0.3 <= elapsed < 10


def test_stop_is_idempotent(neondb_database_url: str) -> None:
    host, port = parse_url(neondb_database_url).host, 5432
    proxy = FaultProxy(host, port).start()
    proxy.stop()
    proxy.stop()
