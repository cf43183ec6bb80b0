"""neondb.url: every URL form users paste, translated per driver; refusals; no password shown.

The live TLS + SCRAM connections with these URLs are in test_url_tls.py.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from neondb import ConfigurationError, Database, DatabaseURL, parse_url
from neondb.url import ConnectSpec

PASSWORD = "s3cr3t-Pw-7d1f"
NEON_HOST = "ep-cool-darkness-123456.us-east-2.aws.neon.tech"
POOLER_HOST = "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech"
CONSOLE = f"postgresql://alex:{PASSWORD}@{NEON_HOST}/neondb?sslmode=require&channel_binding=require"


@pytest.fixture(autouse=True)
def empty_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A home folder without ~/.postgresql: libpq's default root.crt (which the asyncpg
    translation uses as libpq does) is only there when a test puts it there."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def libpq(url: str, timeout: float = 10.0) -> dict[str, Any]:
    spec = parse_url(url).spec("psycopg", connect_timeout_s=timeout)
    assert set(spec.kwargs) == {"conninfo"}
    return conninfo_to_dict(spec.kwargs["conninfo"])


def asyncpg_kwargs(url: str, timeout: float = 10.0) -> dict[str, Any]:
    spec = parse_url(url).spec("asyncpg", connect_timeout_s=timeout)
    assert spec.driver == "asyncpg"
    return dict(spec.kwargs)


# schemes and driver hints ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "hint"),
    [
        ("postgres", None),
        ("postgresql", None),
        ("postgresql+asyncpg", "asyncpg"),
        ("postgresql+psycopg", "psycopg"),
        ("postgresql+psycopg_async", "psycopg"),
        ("postgresql+psycopg2", "psycopg"),
    ],
)
def test_every_scheme_parses_and_translates_for_both_drivers(scheme: str, hint: str | None) -> None:
    url = parse_url(f"{scheme}://alex:{PASSWORD}@db.example.com:6543/app")
    assert url.driver_hint == hint
    assert url.host == "db.example.com"

    kw = asyncpg_kwargs(url.url.render_as_string(hide_password=False))
    assert kw["host"] == "db.example.com"
    assert kw["port"] == 6543
    assert kw["user"] == "alex"
    assert kw["password"] == PASSWORD
    assert kw["database"] == "app"

    params = libpq(url.url.render_as_string(hide_password=False))
    assert params["host"] == "db.example.com"
    assert params["port"] == "6543"
    assert params["user"] == "alex"
    assert params["password"] == PASSWORD
    assert params["dbname"] == "app"


def test_driver_hint_picks_the_driver_unless_db_driver_says_otherwise() -> None:
    from neondb_support import make_settings

    db = Database(make_settings(f"postgresql+psycopg://u:{PASSWORD}@h/db"))
    db.url = parse_url(f"postgresql+psycopg://u:{PASSWORD}@h/db")
    assert db.driver == "psycopg"
    db = Database(make_settings("postgresql://u@h/db", db_driver="psycopg"))
    db.url = parse_url("postgresql+asyncpg://u@h/db")
    assert db.driver == "psycopg"
    db = Database(make_settings("postgresql://u@h/db"))
    db.url = parse_url("postgresql://u@h/db")
    assert db.driver == "asyncpg"


def test_default_driver_behind_a_transaction_pooler_is_psycopg() -> None:
    """asyncpg cannot keep prepared statements behind a transaction pooler and pays two
    round trips per statement there; psycopg sends each in one (test_engine.py counts)."""
    from neondb_support import make_settings

    pooled = f"postgresql://alex:{PASSWORD}@{POOLER_HOST}/neondb"
    db = Database(make_settings(pooled))
    db.url = parse_url(pooled)  # as start() sets it
    assert db.driver == "psycopg"
    db = Database(make_settings(pooled.upper().replace("POSTGRESQL", "postgresql")))
    db.url = parse_url(pooled.upper().replace("POSTGRESQL", "postgresql"))
    assert db.driver == "psycopg"
    forced = Database(make_settings("postgresql://u@h/db", db_pooler="transaction"))
    forced.url = parse_url("postgresql://u@h/db")
    assert forced.driver == "psycopg"
    # The URL's driver and DB_DRIVER still win.
    hinted = Database(make_settings("postgresql+asyncpg://u@h/db", db_pooler="transaction"))
    hinted.url = parse_url("postgresql+asyncpg://u@h/db")
    assert hinted.driver == "asyncpg"
    chosen = Database(make_settings(pooled, db_driver="asyncpg"))
    chosen.url = parse_url(pooled)
    assert chosen.driver == "asyncpg"
    direct = Database(make_settings(CONSOLE))
    direct.url = parse_url(CONSOLE)
    assert direct.driver == "asyncpg"


def test_percent_encoded_password_is_decoded_for_both_drivers() -> None:
    url = "postgresql://alex:p%40ss%2Fw%3Ard@localhost:5433/app"
    assert asyncpg_kwargs(url)["password"] == "p@ss/w:rd"
    assert libpq(url)["password"] == "p@ss/w:rd"


# the Neon console string ------------------------------------------------------------------


def test_neon_console_string_for_psycopg_keeps_sslmode_and_channel_binding() -> None:
    params = libpq(CONSOLE)
    assert params["sslmode"] == "require"
    assert params["channel_binding"] == "require"
    assert params["host"] == NEON_HOST
    assert params["dbname"] == "neondb"


def test_neon_console_string_for_asyncpg_becomes_verify_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="neondb"):
        kw = asyncpg_kwargs(CONSOLE)
    # Nothing libpq-only reaches asyncpg.connect(): that was the TypeError.
    assert not {"sslmode", "channel_binding"} & set(kw)
    assert "server_settings" not in kw
    ctx = kw["ssl"]
    assert isinstance(ctx, ssl.SSLContext)
    # No channel binding in asyncpg: the certificate and host name are verified instead.
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert "channel binding" in caplog.text
    assert "verify-full" in caplog.text
    assert PASSWORD not in caplog.text


def test_sslmode_require_without_channel_binding_encrypts_without_verifying() -> None:
    # libpq semantics: `require` encrypts and does not check the certificate.
    ctx = asyncpg_kwargs(f"postgresql://alex:{PASSWORD}@{NEON_HOST}/neondb?sslmode=require")["ssl"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.check_hostname is False


@pytest.mark.parametrize(
    ("query", "verify", "hostname"),
    [
        ("sslmode=verify-full", ssl.CERT_REQUIRED, True),
        ("sslmode=verify-ca&sslrootcert={ca}", ssl.CERT_REQUIRED, False),
        ("sslmode=require&sslrootcert={ca}", ssl.CERT_REQUIRED, False),
        ("sslmode=verify-full&sslrootcert={ca}", ssl.CERT_REQUIRED, True),
        ("sslmode=require&channel_binding=require&sslrootcert={ca}", ssl.CERT_REQUIRED, True),
    ],
)
def test_asyncpg_ssl_context_per_sslmode(
    query: str, verify: ssl.VerifyMode, hostname: bool, tmp_path: Any
) -> None:
    ca = _write_ca(tmp_path)
    kw = asyncpg_kwargs(f"postgresql://alex:{PASSWORD}@db.example.com/app?{query.format(ca=ca)}")
    ctx = kw["ssl"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == verify
    assert ctx.check_hostname is hostname
    assert "sslrootcert" not in kw
    if "{ca}" in query:
        # The given CA, not the system store, is the trust anchor.
        assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "test CA"),),)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", "prefer"),
        ("sslmode=prefer", "prefer"),
        ("sslmode=allow", "prefer"),
        ("sslmode=disable", False),
    ],
)
def test_asyncpg_ssl_for_non_verifying_modes(query: str, expected: object) -> None:
    url = f"postgresql://alex:{PASSWORD}@db.example.com/app" + (f"?{query}" if query else "")
    assert asyncpg_kwargs(url)["ssl"] == expected
    assert libpq(url)["sslmode"] == (query.split("=")[1] if query else "prefer")


def test_neon_detection_ignores_case() -> None:
    # DNS names are case-insensitive: a host pasted in capitals is still Neon, still TLS.
    upper = f"postgresql://alex:{PASSWORD}@{NEON_HOST.upper()}/neondb"
    parsed = parse_url(upper)
    assert parsed.is_neon
    assert not parsed.is_pooler
    assert parsed.sslmode == "require"
    assert libpq(upper)["sslmode"] == "require"
    assert libpq(upper + "?sslmode=prefer")["sslmode"] == "require"
    assert isinstance(asyncpg_kwargs(upper)["ssl"], ssl.SSLContext)
    with pytest.raises(ConfigurationError, match="Neon"):
        parse_url(upper + "?sslmode=disable").spec("psycopg", connect_timeout_s=5)
    pooled = parse_url(f"postgresql://alex:{PASSWORD}@{POOLER_HOST.upper()}:5432/neondb")
    assert pooled.is_neon
    assert pooled.is_pooler
    mixed = parse_url(f"postgresql://alex:{PASSWORD}@Ep-X-123-Pooler.Us-East-2.Aws.Neon.Tech/db")
    assert mixed.is_neon
    assert mixed.is_pooler


def test_neon_host_always_gets_tls() -> None:
    plain = f"postgresql://alex:{PASSWORD}@{NEON_HOST}/neondb"
    assert parse_url(plain).sslmode == "require"
    assert libpq(plain)["sslmode"] == "require"
    assert isinstance(asyncpg_kwargs(plain)["ssl"], ssl.SSLContext)
    # `prefer` would silently allow plain text elsewhere; with Neon it is TLS.
    assert libpq(plain + "?sslmode=prefer")["sslmode"] == "require"


# pooler, options, sslrootcert, application_name, connect_timeout -----------------------------


def test_pooler_host_is_detected() -> None:
    from neondb_support import make_settings

    pooled = parse_url(f"postgres://alex:{PASSWORD}@{POOLER_HOST}/neondb?sslmode=require")
    direct = parse_url(CONSOLE)
    assert pooled.is_pooler
    assert pooled.is_neon
    assert not direct.is_pooler
    assert direct.is_neon
    # A `-pooler` elsewhere in the name is not the first label: not Neon's pooler.
    assert not parse_url("postgresql://u@db.my-pooler.example.com/app").is_pooler

    auto = Database(make_settings(pooled.url.render_as_string(hide_password=False)))
    assert auto.behind_pooler(pooled) is True
    assert auto.behind_pooler(direct) is False
    forced = Database(make_settings("postgresql://u@h/db", db_pooler="transaction"))
    assert forced.behind_pooler(direct) is True
    off = Database(make_settings("postgresql://u@h/db", db_pooler="none"))
    assert off.behind_pooler(pooled) is False


def test_endpoint_options_reach_both_drivers() -> None:
    url = f"postgresql://alex:{PASSWORD}@{NEON_HOST}/neondb?sslmode=require&options=endpoint%3Dep-cool-darkness-123456"
    assert libpq(url)["options"] == "endpoint=ep-cool-darkness-123456"
    kw = asyncpg_kwargs(url)
    assert kw["server_settings"] == {"options": "endpoint=ep-cool-darkness-123456"}


def test_application_name_and_connect_timeout() -> None:
    url = f"postgresql://alex:{PASSWORD}@{NEON_HOST}/neondb?application_name=todo-api&connect_timeout=7"
    kw = asyncpg_kwargs(url, timeout=3)
    assert kw["server_settings"] == {"application_name": "todo-api"}
    assert kw["timeout"] == 7.0  # the URL's own value wins over DB_CONNECT_TIMEOUT_S
    params = libpq(url, timeout=3)
    assert params["application_name"] == "todo-api"
    assert params["connect_timeout"] == "7"


def test_connect_timeout_setting_for_both_drivers() -> None:
    url = f"postgresql://alex:{PASSWORD}@db.example.com/app"
    assert asyncpg_kwargs(url, timeout=3.5)["timeout"] == 3.5
    assert libpq(url, timeout=4)["connect_timeout"] == "4"
    # libpq counts whole seconds and raises anything under 2 to 2: say 2 rather than 0.
    assert libpq(url, timeout=0.5)["connect_timeout"] == "2"


def test_sslrootcert_reaches_libpq() -> None:
    url = f"postgresql+psycopg://alex:{PASSWORD}@{NEON_HOST}/neondb?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt"
    params = libpq(url)
    assert params["sslmode"] == "verify-full"
    assert params["sslrootcert"] == "/etc/ssl/certs/ca-certificates.crt"


def test_libpq_only_parameters_are_dropped_for_asyncpg() -> None:
    url = (
        f"postgresql://alex:{PASSWORD}@db.example.com/app?sslmode=require"
        "&gssencmode=disable&channel_binding=prefer&pgbouncer=true"
    )
    kw = asyncpg_kwargs(url)
    assert not {"gssencmode", "channel_binding", "pgbouncer"} & set(kw)
    assert "server_settings" not in kw


@pytest.mark.parametrize("attrs", ["any", "read-write", "primary", "standby", "prefer-standby"])
def test_target_session_attrs_reaches_both_drivers(attrs: str) -> None:
    # asyncpg supports it (multi-host URLs, replicas): passed on, not dropped.
    url = f"postgresql://alex:{PASSWORD}@db.example.com/app?target_session_attrs={attrs}"
    kw = asyncpg_kwargs(url)
    assert kw["target_session_attrs"] == attrs
    assert "server_settings" not in kw
    assert libpq(url)["target_session_attrs"] == attrs


def test_password_query_parameter_is_accepted_and_masked() -> None:
    # libpq's other way to give a password: `?password=...`.
    url = f"postgresql://alex@db.example.com/app?sslmode=require&password={PASSWORD}"
    kw = asyncpg_kwargs(url)
    assert kw["password"] == PASSWORD
    assert "server_settings" not in kw
    assert libpq(url)["password"] == PASSWORD
    parsed = parse_url(url)
    for shown in (parsed.display, repr(parsed), str(parsed), f"{parsed}"):
        assert PASSWORD not in shown
        assert "password=" in shown  # masked, not dropped: the log says one was given
        assert "sslmode=require" in shown
    assert parse_url(parsed.display).param("password") == "***"
    for driver in ("asyncpg", "psycopg"):
        spec = parsed.spec(driver, connect_timeout_s=5)  # type: ignore[arg-type]
        assert PASSWORD not in repr(spec)
    from neondb_support import make_settings

    db = Database(make_settings(url))
    db.url = parsed
    assert PASSWORD not in repr(db)
    both = parse_url(f"postgresql://alex:other-pw@db.example.com/app?password={PASSWORD}")
    assert PASSWORD not in both.display
    assert "other-pw" not in both.display


def test_password_given_twice_is_the_same_for_both_drivers_as_for_libpq() -> None:
    raw = f"postgresql://alex:other-pw@db.example.com/app?password={PASSWORD}"
    assert conninfo_to_dict(raw)["password"] == PASSWORD  # libpq: the query wins
    assert asyncpg_kwargs(raw)["password"] == PASSWORD
    assert libpq(raw)["password"] == PASSWORD


def test_unix_socket_url() -> None:
    url = "postgresql://postgres@/app?host=/run/postgresql&port=6000"
    parsed = parse_url(url)
    assert parsed.is_unix_socket
    assert parsed.sslmode == "disable"
    kw = asyncpg_kwargs(url)
    assert (kw["host"], kw["port"], kw["ssl"]) == ("/run/postgresql", 6000, False)
    params = libpq(url)
    assert (params["host"], params["port"]) == ("/run/postgresql", "6000")


def test_with_database_keeps_everything_else() -> None:
    other = parse_url(CONSOLE).with_database("branch_db")
    assert other.url.database == "branch_db"
    assert other.url.password == PASSWORD
    assert other.param("channel_binding") == "require"


# refusals ------------------------------------------------------------------------------------


def _refused(url: str, driver: str = "asyncpg") -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        parse_url(url).spec(driver, connect_timeout_s=5)  # type: ignore[arg-type]
    err = info.value
    assert PASSWORD not in str(err)
    assert PASSWORD not in repr(err)
    assert err.status_code == 500
    return err


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_channel_binding_require_with_sslmode_disable_is_refused(driver: str) -> None:
    err = _refused(
        f"postgresql://alex:{PASSWORD}@db.example.com/app?sslmode=disable&channel_binding=require",
        driver,
    )
    assert "channel_binding=require" in str(err)
    assert "sslmode=disable" in str(err)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_sslmode_disable_on_neon_is_refused(driver: str) -> None:
    err = _refused(f"postgresql://alex:{PASSWORD}@{NEON_HOST}/neondb?sslmode=disable", driver)
    assert "Neon" in str(err)
    assert "TLS" in str(err)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_unknown_sslmode_is_refused(driver: str) -> None:
    err = _refused(f"postgresql://alex:{PASSWORD}@db.example.com/app?sslmode=maybe", driver)
    assert "sslmode='maybe'" in str(err)


def test_unknown_channel_binding_is_refused_for_asyncpg() -> None:
    err = _refused(f"postgresql://alex:{PASSWORD}@db.example.com/app?channel_binding=always")
    assert "channel_binding='always'" in str(err)


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://alex:{PASSWORD}@db.example.com/app",
        f"sqlite:///{PASSWORD}.db",
        f"postgresql+pg8000://alex:{PASSWORD}@db.example.com/app",
    ],
)
def test_unknown_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(url)
    assert "not PostgreSQL" in str(info.value)
    assert "postgresql://" in str(info.value)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"alex:{PASSWORD}@db.example.com/app",
        f"alex:{PASSWORD}://x@db.example.com/app",
        f"postgresql://alex:{PASSWORD}@db.example.com:notaport/app",
        "",
        "   ",
    ],
)
def test_something_that_is_not_a_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(url)
    assert "postgresql://user:password@host:port/database" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_url_without_host_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="names no host"):
        parse_url(f"postgresql://alex:{PASSWORD}@/app")


def test_unsupported_asyncpg_parameter_is_refused_and_names_the_fix() -> None:
    err = _refused(f"postgresql://alex:{PASSWORD}@db.example.com/app?keepalives=1")
    assert "'keepalives'" in str(err)
    assert "DB_DRIVER=psycopg" in str(err)
    # libpq knows it: the same URL works with psycopg.
    assert (
        libpq(f"postgresql://alex:{PASSWORD}@db.example.com/app?keepalives=1")["keepalives"] == "1"
    )


def test_bad_connect_timeout_is_refused_for_asyncpg() -> None:
    err = _refused(f"postgresql://alex:{PASSWORD}@db.example.com/app?connect_timeout=soon")
    assert "connect_timeout='soon'" in str(err)


# no password anywhere --------------------------------------------------------------------------


def test_no_password_in_repr_str_or_display() -> None:
    url = parse_url(CONSOLE)
    for text in (repr(url), str(url), url.display, f"{url}", f"{url!r}"):
        assert PASSWORD not in text
        assert "***" in text
    for driver in ("asyncpg", "psycopg"):
        spec = url.spec(driver, connect_timeout_s=5)  # type: ignore[arg-type]
        assert isinstance(spec, ConnectSpec)
        assert PASSWORD not in repr(spec)
        assert PASSWORD not in str(spec)
        assert driver in repr(spec)


def test_database_repr_hides_the_password() -> None:
    from neondb_support import make_settings

    db = Database(make_settings(CONSOLE))
    assert repr(db) == "Database('neondb', not started)"
    db.url = parse_url(CONSOLE)
    assert PASSWORD not in repr(db)
    assert NEON_HOST in repr(db)


def test_parse_returns_a_frozen_value() -> None:
    url = parse_url(CONSOLE)
    assert isinstance(url, DatabaseURL)
    with pytest.raises(AttributeError):
        url.driver_hint = "psycopg"  # type: ignore[misc]


def _write_ca(tmp_path: Any) -> str:
    """A throwaway CA certificate file whose subject is CN=test CA."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


# hosts and ports, as libpq reads them ----------------------------------------------------------


def _libpq_truth(raw: str) -> tuple[list[str], list[int]]:
    """libpq's own reading of a URL (PQconninfoParse), ports filled in as libpq does."""
    parsed = conninfo_to_dict(raw)
    hosts = str(parsed["host"]).split(",")
    ports = [int(p) if p else 5432 for p in str(parsed.get("port", "")).split(",")]
    return hosts, ports * len(hosts) if len(ports) == 1 else ports


def test_host_and_port_query_parameters_reach_both_drivers() -> None:
    """The reported URL: an empty authority, the server in ?host=&port=. asyncpg was given
    host=None and went to its default, 127.0.0.1:5432, with the credentials."""
    raw = f"postgresql://u:{PASSWORD}@/db?host=192.0.2.10&port=9999"
    kw = asyncpg_kwargs(raw)
    assert (kw["host"], kw["port"]) == ("192.0.2.10", 9999)
    params = libpq(raw)
    assert (params["host"], params["port"]) == ("192.0.2.10", "9999")
    assert _libpq_truth(raw) == (["192.0.2.10"], [9999])
    # A port in the query with the host in the authority: also the query's (was 5432).
    kw = asyncpg_kwargs(f"postgresql://u:{PASSWORD}@db.example.com/db?port=6543")
    assert (kw["host"], kw["port"]) == ("db.example.com", 6543)


@pytest.mark.parametrize(
    ("raw", "hosts", "ports"),
    [
        ("postgresql://u@h1:5432,h2:5433/db", ["h1", "h2"], [5432, 5433]),
        ("postgresql://u@/db?host=h1,h2&port=5432,5433", ["h1", "h2"], [5432, 5433]),
        ("postgresql://u@h1,h2:5433/db", ["h1", "h2"], [5432, 5433]),
        ("postgresql://u@h1,h2/db?port=6000", ["h1", "h2"], [6000, 6000]),
        ("postgresql://u@[::1]:5432,[2001:db8::2]/db", ["::1", "2001:db8::2"], [5432, 5432]),
        ("postgresql://u@/db?host=::1,h2&port=5433", ["::1", "h2"], [5433, 5433]),
        ("postgresql://u@%2Ftmp%2Fsock:5433/db", ["/tmp/sock"], [5433]),
        # libpq: the query's host wins over the authority's; the authority's port stays.
        ("postgresql://u@ha:6001/db?host=hb", ["hb"], [6001]),
        ("postgresql://u@h1:5432,h2:5433/db?host=hq", None, None),
    ],
)
def test_host_lists_are_read_as_libpq_reads_them_by_both_drivers(
    raw: str, hosts: list[str] | None, ports: list[int] | None
) -> None:
    if hosts is None:
        # 1 host in the query, 2 ports in the authority: libpq cannot match them either.
        err = _refused(raw)
        assert "2 ports for 1 hosts" in str(err)
        _refused(raw, "psycopg")
        return
    assert _libpq_truth(raw) == (hosts, ports)
    kw = asyncpg_kwargs(raw)
    if len(hosts) == 1:
        assert (kw["host"], kw["port"]) == (hosts[0], ports[0])  # type: ignore[index]
    else:
        assert (kw["host"], kw["port"]) == (hosts, ports)
    params = libpq(raw)
    assert params["host"] == ",".join(hosts)
    assert params["port"] == ",".join(map(str, ports or []))
    assert parse_url(raw).endpoints == tuple(zip(hosts, ports or [], strict=True))
    assert parse_url(raw).host == hosts[0]


def test_a_host_list_is_kept_in_the_display_and_survives_a_round_trip() -> None:
    parsed = parse_url(f"postgresql://u:{PASSWORD}@h1:5432,h2:5433/db?sslmode=require")
    assert PASSWORD not in parsed.display
    again = parse_url(parsed.url.render_as_string(hide_password=False))
    assert again.endpoints == (("h1", 5432), ("h2", 5433))
    assert again.url.password == PASSWORD


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        # SQLAlchemy's multi-host form: libpq keeps only the last, "h2:5433", as a name.
        ("postgresql://u@/db?host=h1:5432&host=h2:5433", "host= 2 times"),
        ("postgresql://u@/db?host=h1&host=h2&port=5432&port=5433", "host= 2 times"),
        ("postgresql://u@h1/db?port=5432&port=5433", "port= 2 times"),
        ("postgresql://u@/db?host=h1:5432", "host='h1:5432'"),
        ("postgresql://u@/db?host=[::1]", "host='[::1]'"),
        # An empty entry is libpq's default host (a local socket, localhost).
        ("postgresql://u@,h2/db", "empty entry"),
        ("postgresql://u@h1,/db", "empty entry"),
        ("postgresql://u@/db?host=h1,,h2", "empty entry"),
        ("postgresql://u@/db?host=", "names no host"),
        ("postgresql://u@/db?host=a,b,c&port=1,2", "2 ports for 3 hosts"),
        ("postgresql://u@h/db?port=0", "port='0'"),
        ("postgresql://u@h/db?port=70000", "port='70000'"),
        ("postgresql://u@h/db?port=x", "port='x'"),
        ("postgresql://u@h1:1,[::1/db", "IPv6"),
        ("postgresql://u@h/db?target_session_attrs=leader", "target_session_attrs='leader'"),
    ],
)
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_host_and_port_forms_libpq_reads_otherwise_are_refused(
    raw: str, says: str, driver: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(raw).spec(driver, connect_timeout_s=5)  # type: ignore[arg-type]
    assert says in str(info.value)


def test_user_and_dbname_query_parameters_win_as_in_libpq() -> None:
    raw = f"postgresql://alice:{PASSWORD}@h/first?user=bob&dbname=second"
    assert conninfo_to_dict(raw)["user"] == "bob"  # libpq's reading
    kw = asyncpg_kwargs(raw)
    assert (kw["user"], kw["database"]) == ("bob", "second")
    params = libpq(raw)
    assert (params["user"], params["dbname"]) == ("bob", "second")


def test_direct_url_drops_pooler_from_every_host() -> None:
    from neondb_support import make_settings

    from neondb.target import direct_url

    single = parse_url(f"postgresql://u:{PASSWORD}@{POOLER_HOST}:5432/neondb")
    direct = direct_url(make_settings(None), single)
    assert direct is not None
    assert direct.endpoints == ((NEON_HOST, 5432),)
    pair = parse_url(f"postgresql://u:{PASSWORD}@{POOLER_HOST}:5432,{POOLER_HOST}:6543/neondb")
    direct = direct_url(make_settings(None), pair)
    assert direct is not None
    assert direct.endpoints == ((NEON_HOST, 5432), (NEON_HOST, 6543))
    assert direct.url.password == PASSWORD


# an '@' or '/' in the password -------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://app:Xk9@Qz7Lm@db.example.com/app",
        "postgresql://app:Xk9@Qz7Lm@db.example.com:5432/app?sslmode=require",
        "postgresql://app:Xk9/Qz7Lm@db.example.com/app",
        "postgresql://app:Xk9@Qz/7Lm@db.example.com/app",
        # No password, but an '@' SQLAlchemy would take for the end of one.
        "postgresql://db.example.com:5432/app?application_name=Xk9@Qz7Lm",
    ],
)
def test_unencoded_at_or_slash_is_refused_without_showing_the_password(raw: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(raw)
    message = str(info.value)
    assert "%40" in message
    assert "%2F" in message
    assert "percent-encode" in message
    for part in ("Xk9", "Qz7Lm", "Qz", "7Lm", "db.example.com"):
        assert part not in message
        assert part not in repr(info.value)


def test_unencoded_at_in_the_password_is_refused_by_neondb_url_and_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from neondb_support import make_settings
    from typer.testing import CliRunner

    from neondb.cli import app
    from neondb.target import Target

    raw = "postgresql://app:Xk9@Qz7Lm@db.example.com/app"
    for name in list(os.environ):
        if name.upper().startswith(("DB_", "DATABASE_")):
            monkeypatch.delenv(name)
    result = CliRunner().invoke(app, ["url", raw])
    assert result.exit_code == 2
    assert "%40" in result.output
    assert "Qz7Lm" not in result.output
    assert "Xk9" not in result.output
    with pytest.raises(ConfigurationError) as info:
        Target.from_settings(make_settings(raw))
    assert str(info.value).startswith("DATABASE_URL: ")
    assert "Qz7Lm" not in str(info.value)
    # Encoded, the same password is read whole by both drivers.
    encoded = "postgresql://app:Xk9%40Qz7Lm@db.example.com/app"
    assert asyncpg_kwargs(encoded)["password"] == "Xk9@Qz7Lm"
    assert libpq(encoded)["password"] == "Xk9@Qz7Lm"
    assert (asyncpg_kwargs(encoded)["host"], libpq(encoded)["host"]) == ("db.example.com",) * 2


def test_question_mark_in_the_password_is_read_alike_by_libpq_and_both_drivers() -> None:
    raw = "postgresql://app:pa?ss@db.example.com/app"
    assert conninfo_to_dict(raw)["password"] == "pa?ss"
    assert asyncpg_kwargs(raw)["password"] == "pa?ss"
    assert libpq(raw)["password"] == "pa?ss"


# sslrootcert=system ---------------------------------------------------------------------------


def test_sslrootcert_system_means_verify_full_for_both_drivers() -> None:
    raw = f"postgresql://u:{PASSWORD}@db.example.com/app?sslrootcert=system"
    assert parse_url(raw).sslmode == "verify-full"
    assert libpq(raw)["sslmode"] == "verify-full"  # was prefer, which libpq 16+ rejects
    assert libpq(raw)["sslrootcert"] == "system"
    ctx = asyncpg_kwargs(raw)["ssl"]  # was the string "prefer": plain text if refused
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    explicit = asyncpg_kwargs(raw + "&sslmode=verify-full")["ssl"]
    assert explicit.check_hostname is True


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require", "verify-ca"])
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_weaker_sslmode_with_sslrootcert_system_is_refused(mode: str, driver: str) -> None:
    err = _refused(
        f"postgresql://u:{PASSWORD}@db.example.com/app?sslmode={mode}&sslrootcert=system", driver
    )
    assert f"sslmode={mode}" in str(err)
    assert "sslrootcert=system" in str(err)
    assert "verify-full" in str(err)


def test_sslrootcert_system_needs_libpq_16() -> None:
    from neondb.url import LIBPQ_SYSTEM_ROOTS, require_libpq

    with pytest.raises(ConfigurationError) as info:
        require_libpq(150007, "sslrootcert=system", LIBPQ_SYSTEM_ROOTS)
    assert "needs libpq 16 or later" in str(info.value)
    assert "libpq 15.7" in str(info.value)
    assert "DB_DRIVER=asyncpg" in str(info.value)
    require_libpq(160000, "sslrootcert=system", LIBPQ_SYSTEM_ROOTS)  # no error


# sslcert, sslkey, sslrootcert files -----------------------------------------------------------


@pytest.mark.parametrize("key", ["sslcert", "sslkey", "sslrootcert"])
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_missing_tls_file_is_named(key: str, driver: str, tmp_path: Any) -> None:
    missing = tmp_path / "missing.crt"
    cert = _write_ca(tmp_path)
    extra = f"&sslcert={cert}" if key == "sslkey" else ""
    err = _refused(
        f"postgresql://u:{PASSWORD}@db.example.com/app?sslmode=verify-full&{key}={missing}{extra}",
        driver,
    )
    assert f"{key}='{missing}'" in str(err)
    assert "does not exist" in str(err)


@pytest.mark.parametrize("mode", ["prefer", "allow"])
@pytest.mark.parametrize("key", ["sslcert", "sslrootcert"])
def test_asyncpg_refuses_tls_files_it_would_ignore(mode: str, key: str, tmp_path: Any) -> None:
    path = _write_ca(tmp_path)
    raw = f"postgresql://u:{PASSWORD}@db.example.com/app?sslmode={mode}&{key}={path}"
    err = _refused(raw)
    assert key in str(err)
    assert f"sslmode={mode}" in str(err)
    assert "DB_DRIVER=psycopg" in str(err)
    assert libpq(raw)[key] == path  # libpq uses them: passed on


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_tls_files_with_sslmode_disable_are_refused(driver: str, tmp_path: Any) -> None:
    path = _write_ca(tmp_path)
    err = _refused(
        f"postgresql://u:{PASSWORD}@db.example.com/app?sslmode=disable&sslcert={path}", driver
    )
    assert "sslcert" in str(err)
    assert "disable" in str(err)


def test_asyncpg_loads_the_client_certificate_or_says_why_not(tmp_path: Any) -> None:
    cert, key = _write_client_cert(tmp_path)
    base = f"postgresql://u:{PASSWORD}@db.example.com/app?sslmode=require"
    ctx = asyncpg_kwargs(f"{base}&sslcert={cert}&sslkey={key}")["ssl"]
    assert isinstance(ctx, ssl.SSLContext)
    # A certificate without its key: refused, naming the parameters (no terminal prompt).
    err = _refused(f"{base}&sslcert={cert}")
    assert "sslcert=" in str(err)
    assert "sslkey" in str(err)
    err = _refused(f"{base}&sslkey={key}")
    assert "sslkey without sslcert" in str(err)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    err = _refused(f"{base}&sslrootcert={not_pem}")
    assert "sslrootcert=" in str(err)


def test_default_root_crt_is_used_by_asyncpg_as_libpq_uses_it(
    tmp_path: Any, empty_home: Any
) -> None:
    base = f"postgresql://u:{PASSWORD}@db.example.com/app"
    # No root certificate: verify-ca would check against the system CAs, for any host.
    err = _refused(f"{base}?sslmode=verify-ca")
    assert "sslrootcert" in str(err)
    assert "verify-full" in str(err)
    # ~/.postgresql/root.crt: verify-ca checks against it, and require becomes verify-ca.
    (empty_home / ".postgresql").mkdir()
    ca = Path(_write_ca(tmp_path))
    (empty_home / ".postgresql" / "root.crt").write_bytes(ca.read_bytes())
    for mode in ("verify-ca", "require"):
        ctx = asyncpg_kwargs(f"{base}?sslmode={mode}")["ssl"]
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname is False
        assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "test CA"),),)]


def test_sslpassword_is_masked() -> None:
    parsed = parse_url(f"postgresql://u@db.example.com/app?sslmode=require&sslpassword={PASSWORD}")
    assert PASSWORD not in parsed.display
    assert "sslpassword=" in parsed.display


def _write_client_cert(tmp_path: Any) -> tuple[str, str]:
    """A self-signed client certificate and its key, in two PEM files."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "u")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "client.crt", tmp_path / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)
