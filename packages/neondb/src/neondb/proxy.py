"""FaultProxy: a loopback TCP proxy that counts round trips and injects faults.

For tests and benchmarks of code that talks to PostgreSQL (or PgBouncer) the way it would
talk to Neon across a network:

* `round_trips`: client "flights": a burst of bytes the client sends after the server last
  spoke. One statement in autocommit costs one; BEGIN + statement + COMMIT cost three.
* `delay_s`: latency added to every chunk in each direction (one-way).
* `mode`: `"pass"`, `"refuse"` (close new connections at once), `"stall"` (accept and never
  answer), `"reset"` (abort new connections).
* `drop_all()`: abort every open connection, as a network cut or a compute suspend would.
* `connections`: connections forwarded upstream; `accepted`: every connection attempt,
  refused and stalled ones included (proves that a client did not even try).

It runs its own event loop in a daemon thread, so synchronous tests and the code under test
(on its own loop) can share it. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Literal

__all__ = ["FaultProxy"]

Mode = Literal["pass", "refuse", "stall", "reset"]


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int = 5432) -> None:
        """`upstream_host` may be a Unix socket folder (as libpq's `host=/dir`)."""
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self.round_trips = 0
        self.connections = 0  # forwarded to the upstream (mode "pass")
        self.accepted = 0  # every connection attempt, whatever the mode
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def __repr__(self) -> str:
        return f"FaultProxy(:{self.port} -> {self.upstream_host}:{self.upstream_port}, {self.mode})"

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(timeout=10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()  # else its self-pipe socket leaks (a ResourceWarning)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_all()
        # Let the forwarding tasks end (their sockets are aborted), so none is pending when
        # the loop closes.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # controls ----------------------------------------------------------------------------

    def reset_counts(self) -> None:
        self.round_trips = 0
        self.connections = 0
        self.accepted = 0

    def drop_all(self) -> None:
        """Abort every open connection (both sides see a reset)."""
        self._loop.call_soon_threadsafe(self._abort_all)

    def _abort_all(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    # forwarding --------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        self.accepted += 1
        if mode in ("refuse", "reset"):
            if mode == "reset":
                with contextlib.suppress(OSError):
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            writer.transport.abort()
            return
        self._writers.add(writer)
        if mode == "stall":
            return  # accepted, never answered: the client's timeout must fire
        self.connections += 1
        try:
            if self.upstream_host.startswith("/"):
                path = f"{self.upstream_host}/.s.PGSQL.{self.upstream_port}"
                up_reader, up_writer = await asyncio.open_unix_connection(path)
            else:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        last = ["server"]  # who spoke last on this connection

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, side: str) -> None:
            try:
                while data := await src.read(65536):
                    if side == "client" and last[0] != "client":
                        self.round_trips += 1
                    last[0] = side
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pump(reader, up_writer, "client"), pump(up_reader, writer, "server"))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
