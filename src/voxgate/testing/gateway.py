"""Run a real gateway inside the current event loop on an ephemeral port (tests, benchmarks).

Real sockets, the real app and the real uvicorn server, just without a subprocess, so a test
can hold both ends and inspect server state (`handle.state`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from voxgate.config import Settings
from voxgate.gateway.app import create_app
from voxgate.gateway.server import VoxgateServer, uvicorn_config
from voxgate.gateway.state import GatewayState


class _InLoopServer(VoxgateServer):
    """No signal capture: the test process owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def, override]
        yield


@dataclass
class GatewayHandle:
    server: VoxgateServer
    state: GatewayState
    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until every session has ended (and so finished writing its turns)."""
        async with asyncio.timeout(timeout):
            while self.state.sessions:
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[GatewayHandle]:
    settings = settings.model_copy(update={"host": "127.0.0.1"})
    app = create_app(settings)
    server = _InLoopServer(uvicorn_config(app, settings, port=0))
    task = asyncio.create_task(server.serve(), name="voxgate-test-server")
    try:
        async with asyncio.timeout(120):  # the first gateway of a process loads the offline models
            while not server.started:
                if task.done():
                    task.result()  # surfaces the startup error
                    raise RuntimeError("gateway exited during startup")
                await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield GatewayHandle(server, app.state.gateway, port)
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(settings.shutdown_deadline_s + 10):
                await task
        except TimeoutError:
            task.cancel()
