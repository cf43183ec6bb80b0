"""The doctor's network steps: the host name resolves (DNS), then a TCP (or Unix socket)
connection opens, timed. The stream is kept for the protocol steps (`wire`)."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from neondb.url import DatabaseURL

__all__ = ["Endpoint", "NetworkError", "open_stream", "resolve"]


class NetworkError(Exception):
    """A network step failed: `str()` says what, `fix` what to do."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what)
        self.fix = fix


@dataclass(frozen=True)
class Endpoint:
    host: str  # a host name, an address, or a Unix socket folder
    port: int

    @classmethod
    def of(cls, url: DatabaseURL) -> Endpoint:
        port = url.url.port or int(url.param("port") or 5432)
        return cls(url.host, port)

    @property
    def unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def socket_path(self) -> str:
        return f"{self.host.rstrip('/')}/.s.PGSQL.{self.port}"

    @property
    def loopback(self) -> bool:
        return self.unix or self.host in ("localhost", "::1") or self.host.startswith("127.")


async def resolve(endpoint: Endpoint, timeout_s: float) -> list[str]:
    """The addresses the host name resolves to, in the order a client tries them."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise NetworkError(
            f"{endpoint.host!r} does not resolve: {e.strerror}",
            "check the host name in DATABASE_URL (for Neon, copy it again from the "
            "console's Connect dialog), and that this machine's DNS works",
        ) from None
    except TimeoutError:
        raise NetworkError(
            f"no DNS answer for {endpoint.host!r} within {timeout_s:g} s",
            "check this machine's DNS resolver (DB_CONNECT_TIMEOUT_S bounds the wait)",
        ) from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def open_stream(
    endpoint: Endpoint, address: str | None, timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    """Connect to `address` (or the Unix socket); return the stream and the time in ms."""
    started = time.perf_counter()
    where = endpoint.socket_path if endpoint.unix else f"{address}:{endpoint.port}"
    try:
        async with asyncio.timeout(timeout_s):
            if endpoint.unix:
                reader, writer = await asyncio.open_unix_connection(endpoint.socket_path)
            else:
                reader, writer = await asyncio.open_connection(address, endpoint.port)
    except TimeoutError:
        raise NetworkError(
            f"no answer from {where} within DB_CONNECT_TIMEOUT_S={timeout_s:g} s "
            "(the connection was neither accepted nor refused)",
            "check the host and port in DATABASE_URL, and any firewall or IP allow list "
            "between here and the server (Neon: the project's IP Allow setting); a server "
            "whose listen queue is full looks the same",
        ) from None
    except (FileNotFoundError, ConnectionRefusedError) as e:
        if endpoint.unix:
            raise NetworkError(
                f"no server at the socket {where} ({e.strerror})",
                "start the server (`neondb embedded start` for the embedded one), or check "
                "host= and port= in DATABASE_URL",
            ) from None
        raise NetworkError(
            f"connection refused by {where}: nothing listens on that port",
            "start the server, or check the port in DATABASE_URL (PostgreSQL listens on "
            "5432 by default; PgBouncer often on 6432)",
        ) from None
    except OSError as e:
        raise NetworkError(
            f"cannot connect to {where}: {e.strerror or e}",
            "check the network path to the server (routes, VPN, firewall)",
        ) from None
    return reader, writer, (time.perf_counter() - started) * 1000
