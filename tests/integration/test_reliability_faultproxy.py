"""The TCP fault proxy itself, against a plain echo server: every mode does what the reliability
tests rely on, switchable at runtime, and a stopped proxy leaves no task behind."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from voxgate.testing.faultproxy import FaultProxy


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if data == b"RST":  # the target dies with a TCP reset
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                     timeout: float = 5.0) -> bytes:  # fmt: skip
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def test_modes_per_connection_and_global(echo_port: int) -> None:
    tasks_before = len(asyncio.all_tasks())
    proxy = await FaultProxy("127.0.0.1", echo_port).start()
    try:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(reader, writer, b"hello") == b"hello"
        await proxy.wait_for_connections(1)
        conn = proxy.connections[0]

        # delay: each direction waits; a lower bound only (a loaded machine is only slower).
        conn.set_mode("delay", delay_ms=150)
        started = loop.time()
        assert await _roundtrip(reader, writer, b"slow") == b"slow"
        assert loop.time() - started >= 0.29

        # blackhole: the connection stays open, nothing gets through either way.
        conn.set_mode("blackhole")
        writer.write(b"void")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        assert conn.blackholed_up == 4 and not conn.closed.is_set()
        conn.set_mode("pass")
        assert await _roundtrip(reader, writer, b"back") == b"back"  # "void" is gone for good

        # reset: the peer sees a TCP RST, not a clean end.
        proxy.kill(conn, "reset")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 5)
        writer.close()
        assert proxy.connections == [] and conn.closed_how == "reset"

        # A reset by the target reaches the client as a reset, not as a clean end.
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"RST")
        await writer.drain()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 5)
        writer.close()

        # drop: a clean end (EOF).
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await _roundtrip(reader, writer, b"x")
        assert proxy.kill_random("drop") is not None
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()
        assert proxy.kill_random("drop") is None  # nothing live to kill

        # Global drop: every new connection ends at once.
        proxy.set_mode("drop")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()
        assert proxy.turned_away == 1

        # refuse: nobody can connect; back to pass, the same port listens again.
        port = proxy.port
        proxy.set_mode("refuse")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        proxy.set_mode("pass")
        await proxy.wait_listening()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _roundtrip(reader, writer, b"again") == b"again"

        # A live=False mode only applies to connections made from now on.
        proxy.set_mode("blackhole", live=False)
        assert await _roundtrip(reader, writer, b"still") == b"still"
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        writer2.write(b"lost")
        await writer2.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader2.read(1), 0.3)
        writer.close()
        writer2.close()
    finally:
        await proxy.stop()
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= tasks_before
