"""The baseline: a raw WebSocket passthrough relay, the least a Python proxy can do.

For each client connection it dials the upstream (same path and query, same Authorization
header) and forwards every message byte for byte in both directions: no parsing, no copies
beyond what `websockets` itself makes, text stays text. voxgate's numbers are read against it.

    python -m voxgate.benchmarking.raw_relay --upstream ws://127.0.0.1:<port>   # prints "PORT <n>"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from voxgate.benchmarking._run import run
from voxgate.benchmarking.procs import announce_port, raise_fd_limit


async def _pump(src: ServerConnection | ClientConnection, dst: ServerConnection | ClientConnection) -> None:
    send = dst.send
    with contextlib.suppress(ConnectionClosed):
        async for message in src:
            await send(message)


def make_handler(upstream: str):  # type: ignore[no-untyped-def]
    async def handle(ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = {}
        auth = ws.request.headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        async with connect(
            upstream.rstrip("/") + ws.request.path,
            additional_headers=headers,
            compression=None,
            max_size=None,
            ping_interval=None,
        ) as up:
            tasks = [asyncio.create_task(_pump(ws, up)), asyncio.create_task(_pump(up, ws))]
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    return handle


async def main(stop: asyncio.Event, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
    raise_fd_limit()
    async with serve(
        make_handler(upstream), host, port, compression=None, max_size=None,
        ping_interval=None, backlog=4096,
    ) as server:  # fmt: skip
        announce_port(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        await stop.wait()
        server.close(close_connections=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="ws://host:port of the upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(lambda stop: main(stop, args.upstream, args.host, args.port))


if __name__ == "__main__":
    cli()
