"""The doctor's protocol steps, spoken by hand on the stream `network` opened, because the
drivers hide them: whether the server offers TLS (SSLRequest), the TLS version and whether
the certificate verifies, and which authentication the server asks for (the first message
after the startup packet: trust, password, MD5, or SCRAM with or without channel binding).
No password is sent: the connection is closed once the server has asked for one."""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass, field

from neondb.doctor.fixes import login_fix
from neondb.doctor.network import Endpoint, NetworkError
from neondb.url import DatabaseURL

__all__ = ["AuthRequest", "TLSInfo", "ask_auth", "close", "negotiate_tls", "ssl_context"]

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_PROTOCOL_3 = 196608
_NO_ANSWER_FIX = (
    "the port accepts connections but nothing there speaks PostgreSQL in time: check the port "
    "in DATABASE_URL (another service?), or a proxy that holds connections; a Neon compute "
    "waking up answers within a few seconds (raise DB_CONNECT_TIMEOUT_S)"
)


@dataclass(frozen=True)
class TLSInfo:
    version: str
    cipher: str
    checked: str  # what was verified, in words


@dataclass(frozen=True)
class AuthRequest:
    method: str  # trust, password, md5, scram-sha-256, gss, sspi
    mechanisms: list[str] = field(default_factory=list)  # SASL only

    @property
    def channel_binding_offered(self) -> bool:
        return "SCRAM-SHA-256-PLUS" in self.mechanisms


def ssl_context(url: DatabaseURL) -> tuple[ssl.SSLContext, str]:
    """The checks libpq makes for the URL's sslmode and sslrootcert, as a context, and
    what they verify in words."""
    mode = url.sslmode
    rootcert = url.param("sslrootcert")
    if mode in ("allow", "prefer", "require") and not rootcert:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx, f"certificate not checked (sslmode={mode})"
    cafile = None if rootcert in (None, "system") else rootcert
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = mode == "verify-full"
    ca = "the system CAs" if cafile is None else f"CA file {cafile}"
    what = "certificate and host name" if ctx.check_hostname else "certificate"
    return ctx, f"{what} verified against {ca}"


async def _read(reader: asyncio.StreamReader, n: int, timeout_s: float) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            return await reader.readexactly(n)
    except TimeoutError:
        raise NetworkError(
            f"connected, but no answer to the PostgreSQL protocol within "
            f"DB_CONNECT_TIMEOUT_S={timeout_s:g} s",
            _NO_ANSWER_FIX,
        ) from None
    except (asyncio.IncompleteReadError, ConnectionError):
        raise NetworkError(
            "the server closed the connection without answering",
            "check that the port is PostgreSQL's (or a pooler's), and the server's log",
        ) from None


async def negotiate_tls(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    url: DatabaseURL,
    endpoint: Endpoint,
    timeout_s: float,
) -> TLSInfo | None:
    """Ask for TLS and complete the handshake with the URL's checks; None when the URL
    does not want TLS or the server declines and the URL allows plain text."""
    mode = url.sslmode
    if mode == "disable" or endpoint.unix:
        return None
    writer.write(_SSL_REQUEST)
    await writer.drain()
    answer = await _read(reader, 1, timeout_s)
    if answer == b"N":
        if mode in ("allow", "prefer"):
            return None
        raise NetworkError(
            f"sslmode={mode}, but the server does not offer TLS",
            "turn TLS on at the server (ssl = on with a certificate), or, for a local server "
            "on a trusted network only, use sslmode=disable or prefer",
        )
    if answer != b"S":
        raise NetworkError(
            f"the server answered the TLS request with {answer!r}: not a PostgreSQL server",
            "check the port in DATABASE_URL",
        )
    ctx, checked = ssl_context(url)
    try:
        async with asyncio.timeout(timeout_s):
            await writer.start_tls(ctx, server_hostname=endpoint.host)
    except ssl.SSLCertVerificationError as e:
        raise NetworkError(
            f"the server's certificate does not verify: {e.verify_message}",
            "point sslrootcert at the CA that signed the server's certificate (Neon: "
            "sslrootcert=system), and use the host name the certificate names; sslmode=require "
            "encrypts without checking",
        ) from None
    except TimeoutError:
        raise NetworkError(
            f"the TLS handshake did not finish within {timeout_s:g} s", _NO_ANSWER_FIX
        ) from None
    except (ssl.SSLError, OSError) as e:
        raise NetworkError(
            f"the TLS handshake failed: {e}",
            "check the server's TLS settings (ssl_min_protocol_version, certificate and key)",
        ) from None
    obj = writer.get_extra_info("ssl_object")
    cipher = obj.cipher() if obj is not None else None
    return TLSInfo(
        obj.version() if obj is not None else "unknown", cipher[0] if cipher else "", checked
    )


def _startup(url: DatabaseURL) -> bytes:
    params = {"user": url.url.username or "", "database": url.url.database or ""}
    params["application_name"] = "neondb-doctor"
    options = url.param("options")
    if options:  # Neon reads `endpoint=<id>` from it when the client sends no SNI
        params["options"] = options
    body = struct.pack("!i", _PROTOCOL_3)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def _error_fields(payload: bytes) -> dict[str, str]:
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


async def ask_auth(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    url: DatabaseURL,
    timeout_s: float,
) -> AuthRequest:
    """Send the startup packet; return the authentication the server asks for."""
    writer.write(_startup(url))
    await writer.drain()
    while True:
        head = await _read(reader, 5, timeout_s)
        kind, length = head[:1], struct.unpack("!i", head[1:])[0]
        if not 4 <= length <= 1 << 20:
            raise NetworkError(
                f"the server sent a malformed message ({kind!r}, {length} bytes)",
                "check the port in DATABASE_URL: it does not look like PostgreSQL",
            )
        payload = await _read(reader, length - 4, timeout_s)
        if kind == b"E":
            fields = _error_fields(payload)
            message = fields.get("M", "refused")
            user, database = url.url.username or "", url.url.database or ""
            fix = login_fix(fields.get("C"), message, user=user, database=database)
            raise NetworkError(f"the server refused the startup: {message}", fix)
        if kind in (b"N", b"v"):  # a notice, or NegotiateProtocolVersion: read on
            continue
        if kind != b"R":
            raise NetworkError(
                f"unexpected message {kind!r} before authentication",
                "check the port in DATABASE_URL: it does not look like PostgreSQL",
            )
        code = struct.unpack("!i", payload[:4])[0]
        if code == 0:  # logged in already: say goodbye politely
            writer.write(b"X\0\0\0\4")
            return AuthRequest("trust")
        if code == 10:
            mechanisms = [m.decode() for m in payload[4:].split(b"\0") if m]
            return AuthRequest("scram-sha-256", mechanisms)
        names = {3: "password", 5: "md5", 7: "gss", 9: "sspi"}
        return AuthRequest(names.get(code, f"code {code}"))


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(1):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        pass  # the probe is over either way
