"""A TCP fault proxy: put it between the gateway and a provider (or its simulator) and break the
network on purpose.

Why a proxy and not only simulator fault modes: a simulator can misbehave at the protocol level
(refuse a handshake, send an error, close a WebSocket), but the faults that hurt in production
are below it: a connection reset by a middlebox, a socket that stays open while nothing gets
through (no pong ever comes back), a slow link, a port that refuses connections. Those need a
real TCP hop whose behaviour a test can switch at runtime.

Modes (per connection, or as the default for all connections with `FaultProxy.set_mode`):

- `pass`      forward bytes both ways.
- `delay`     forward both ways after `delay_ms` (a delay line: order kept, throughput not cut).
- `blackhole` keep both TCP connections open but forward nothing either way (bytes are read
  and discarded). This is how "no pong" is produced: the client's keepalive must notice.
- `drop`      close both sides cleanly (FIN).
- `reset`     close both sides with a TCP RST (`SO_LINGER` 0, then close).
- `refuse`    (proxy-wide only) stop listening, so new connections get ECONNREFUSED; any other
  mode listens again on the same port.

Usage::

    async with FaultProxy("127.0.0.1", sim.port) as proxy:
        settings = ...(openai_url=proxy.ws_url("/v1/realtime"))
        ...
        await proxy.kill_random("reset")        # one live upstream connection dies
        proxy.set_mode("blackhole")             # every connection goes silent
        proxy.set_mode("refuse")                # nobody can connect

Every task the proxy starts is owned by its connection and cancelled on close; `stop()` closes
everything, so a test leaves no task or file descriptor behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import socket
import struct
import time
from typing import Literal

log = logging.getLogger("voxgate.testing.faultproxy")

Mode = Literal["pass", "delay", "blackhole", "drop", "reset", "refuse"]
_CONNECTION_MODES = ("pass", "delay", "blackhole", "drop", "reset")
_CHUNK = 64 * 1024
#: Chunks a delay line may hold per direction before its reader waits (bounded memory).
_DELAY_QUEUE = 256


def _set_rst_on_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class ProxiedConnection:
    """One client connection and its upstream twin, with its own mode."""

    def __init__(
        self,
        proxy: FaultProxy,
        number: int,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        mode: Mode,
        delay_ms: float,
    ) -> None:
        self.proxy = proxy
        self.number = number
        self._client = client
        self._upstream = upstream
        self.mode: Mode = mode
        self.delay_ms = delay_ms
        self.opened_at = time.monotonic()
        self.bytes_up = 0  # client -> upstream, forwarded
        self.bytes_down = 0  # upstream -> client, forwarded
        self.blackholed_up = 0  # client -> upstream, swallowed by `blackhole`
        self.blackholed_down = 0  # upstream -> client, swallowed by `blackhole`
        self.closed = asyncio.Event()
        self.closed_how: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<ProxiedConnection #{self.number} mode={self.mode} closed={self.closed.is_set()}>"

    # --- control ------------------------------------------------------------------------------
    def set_mode(self, mode: Mode, delay_ms: float | None = None) -> None:
        """Switch this connection's behaviour now; `drop`/`reset` end it at once."""
        if mode not in _CONNECTION_MODES:
            raise ValueError(f"a connection cannot be in mode {mode!r}")
        if delay_ms is not None:
            self.delay_ms = delay_ms
        if mode in ("drop", "reset"):
            self.close(mode)
            return
        self.mode = mode

    def close(self, how: Literal["drop", "reset"] = "drop") -> None:
        """End both sides: cleanly (FIN) or with a TCP RST."""
        if self.closed.is_set():
            return
        self.closed_how = how
        self.mode = how
        for _, writer in (self._client, self._upstream):
            if how == "reset":
                _set_rst_on_close(writer)
                writer.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    writer.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self.closed.set()
        self.proxy._forget(self)

    # --- plumbing -----------------------------------------------------------------------------
    def _start(self) -> None:
        for name, src, dst, up in (
            ("up", self._client[0], self._upstream[1], True),
            ("down", self._upstream[0], self._client[1], False),
        ):
            task = asyncio.get_running_loop().create_task(
                self._pump(src, dst, up), name=f"faultproxy-{self.number}-{name}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        line: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_DELAY_QUEUE)
        writer_task = asyncio.get_running_loop().create_task(
            self._delay_writer(line, dst, up), name=f"faultproxy-{self.number}-line"
        )
        self._tasks.add(writer_task)
        writer_task.add_done_callback(self._tasks.discard)
        how: Literal["drop", "reset"] = "drop"
        try:
            while True:
                try:
                    data = await src.read(_CHUNK)
                except (ConnectionError, OSError):
                    data, how = b"", "reset"
                if not data:
                    break  # the peer closed (or reset): end both sides the same way
                mode = self.mode
                if mode == "blackhole":
                    self._swallowed(len(data), up)
                    continue
                due = time.monotonic() + (self.delay_ms / 1000.0 if mode == "delay" else 0.0)
                await line.put((due, data))
            if how == "drop":
                await line.put(None)
                await writer_task  # deliver what is still in the delay line, then FIN
        finally:
            if not writer_task.done():
                writer_task.cancel()
            if not self.closed.is_set():
                self.close(how)

    def _swallowed(self, n: int, up: bool) -> None:
        if up:
            self.blackholed_up += n
        else:
            self.blackholed_down += n

    async def _delay_writer(
        self, line: asyncio.Queue[tuple[float, bytes] | None], dst: asyncio.StreamWriter, up: bool
    ) -> None:
        while True:
            entry = await line.get()
            if entry is None:
                return
            due, data = entry
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.mode == "blackhole":
                self._swallowed(len(data), up)
                continue  # went silent while this chunk waited in the line
            try:
                dst.write(data)
                await dst.drain()
            except (ConnectionError, OSError):
                self.close("reset")  # the other side is gone: so is this connection
                return
            if up:
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)


class FaultProxy:
    """An asyncio TCP proxy on 127.0.0.1 (port 0 by default) forwarding to `target`."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.mode: Mode = "pass"
        self.delay_ms = 0.0
        #: Live connections, oldest first.
        self.connections: list[ProxiedConnection] = []
        #: Connections accepted (and forwarded) since start, including closed ones.
        self.accepted = 0
        #: Connections refused or ended at once because of a proxy-wide `drop`/`reset`.
        self.turned_away = 0
        #: `time.monotonic()` of every incoming connection, forwarded or turned away (so a test
        #: can see a client's retry schedule).
        self.arrivals: list[float] = []
        self._server: asyncio.Server | None = None
        self._numbers = itertools.count(1)
        self._handshakes: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> FaultProxy:
        await self._listen()
        return self

    async def stop(self) -> None:
        await self._unlisten()
        tasks = [t for c in self.connections for t in c._tasks] + list(self._handshakes)
        for task in list(self._handshakes):
            task.cancel()
        for conn in list(self.connections):
            conn.close("drop")
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def ws_url(self, path: str = "/v1/realtime") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    # --- control ------------------------------------------------------------------------------
    def set_mode(self, mode: Mode, delay_ms: float | None = None, *, live: bool = True) -> None:
        """The default for new connections, applied to every live connection too (unless
        `live=False`: then only connections made from now on are affected, e.g. an outage that
        refuses reconnects while the connections that exist keep working).

        `drop`/`reset` end every live connection and every new one at once (accept, then close);
        `refuse` stops listening; any other mode listens again.
        """
        if delay_ms is not None:
            self.delay_ms = delay_ms
        self.mode = mode
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            return
        if self._server is None:
            # Synchronous callers (tests flipping modes) get the listener back on the next tick.
            task = asyncio.get_running_loop().create_task(self._listen())
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)
        if live:
            for conn in list(self.connections):
                conn.set_mode(mode, delay_ms)

    async def wait_listening(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self._server is None:
                await asyncio.sleep(0.01)

    def kill(self, conn: ProxiedConnection, how: Literal["drop", "reset"] = "reset") -> None:
        conn.close(how)

    def kill_random(
        self, how: Literal["drop", "reset"] = "reset", rng: random.Random | None = None
    ) -> ProxiedConnection | None:
        """End one live connection chosen at random; None when there is none."""
        live = [c for c in self.connections if not c.closed.is_set()]
        if not live:
            return None
        conn = (rng or random).choice(live)
        conn.close(how)
        return conn

    async def wait_for_connections(self, count: int, timeout: float = 10.0) -> None:
        """Until at least `count` connections were accepted since start."""
        async with asyncio.timeout(timeout):
            while self.accepted < count:
                await asyncio.sleep(0.01)

    # --- internals ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_client, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handshakes.add(task)
        try:
            await self._accept(reader, writer)
        finally:
            if task is not None:
                self._handshakes.discard(task)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrivals.append(time.monotonic())
        mode = self.mode
        if mode in ("drop", "reset", "refuse"):
            self.turned_away += 1
            if mode == "reset":
                _set_rst_on_close(writer)
                writer.transport.abort()
            else:
                writer.close()
            return
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError):
            # The target is down: the client sees its connection reset, as through a real hop.
            self.turned_away += 1
            _set_rst_on_close(writer)
            writer.transport.abort()
            return
        for w in (writer, upstream[1]):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = ProxiedConnection(
            self, next(self._numbers), (reader, writer), upstream, mode, self.delay_ms
        )
        self.accepted += 1
        self.connections.append(conn)
        conn._start()

    def _forget(self, conn: ProxiedConnection) -> None:
        with contextlib.suppress(ValueError):
            self.connections.remove(conn)


__all__ = ["FaultProxy", "Mode", "ProxiedConnection"]
