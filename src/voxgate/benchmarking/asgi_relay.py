"""A second baseline: the raw passthrough relay as a bare ASGI app under uvicorn.

Same forwarding as `raw_relay` (every message byte for byte, both ways, no parsing), but served
the way voxgate is served: uvicorn with voxgate's WebSocket settings (`uvicorn_config`'s size
limit and pings; the sans-I/O `websockets` protocol uvicorn picks). Comparing it with `raw_relay`
prices the server stack; comparing voxgate with it prices voxgate's own path.

    python -m voxgate.benchmarking.asgi_relay --upstream ws://127.0.0.1:<port>   # prints "PORT <n>"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from typing import Any

import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voxgate.benchmarking._run import run_coroutine
from voxgate.benchmarking.procs import announce_port, raise_fd_limit

Scope = dict[str, Any]


def make_app(upstream: str):  # type: ignore[no-untyped-def]
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"] + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        extra = {"Authorization": headers["authorization"]} if "authorization" in headers else {}
        async with connect(
            upstream.rstrip("/") + path, additional_headers=extra, compression=None,
            max_size=None, ping_interval=None,
        ) as up:  # fmt: skip
            await send({"type": "websocket.accept"})

            async def client_to_upstream() -> None:
                while True:
                    message = await receive()
                    if message["type"] != "websocket.receive":
                        return
                    data = message.get("text")
                    await up.send(data if data is not None else message["bytes"])

            async def upstream_to_client() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for data in up:
                        if isinstance(data, str):
                            await send({"type": "websocket.send", "text": data})
                        else:
                            await send({"type": "websocket.send", "bytes": data})

            tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    return app


class _AnnouncingServer(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.servers:
            announce_port(self.servers[0].sockets[0].getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    raise_fd_limit()
    config = uvicorn.Config(
        make_app(args.upstream), host="127.0.0.1", port=0, log_level="warning", access_log=False,
        lifespan="off", ws_max_size=16 * 1024 * 1024, ws_ping_interval=20.0, ws_ping_timeout=20.0,
        backlog=4096,
    )  # fmt: skip
    try:
        run_coroutine(_AnnouncingServer(config).serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
