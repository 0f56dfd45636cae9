"""Running the app under uvicorn with a shutdown that clients can act on.

uvicorn's own shutdown closes WebSockets with 1012 ("service restart"), which official SDKs
treat as "reconnect now", and it does so before the app's lifespan shutdown runs. We step in
first: stop accepting, tell every session `status: disconnected` (reason `server_shutdown`),
close with 1001, let sessions finish writing turns, then let uvicorn finish.
"""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from voxgate.config import Settings
from voxgate.gateway.state import GatewayState

log = logging.getLogger("voxgate.server")


class VoxgateServer(uvicorn.Server):
    async def shutdown(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        app = self.config.loaded_app
        state: GatewayState | None = _find_state(app)
        # Stop accepting new connections first.
        for server in getattr(self, "servers", []):
            server.close()
        if state is not None:
            try:
                await state.shutdown_sessions("server_shutdown")
            except Exception:
                log.exception("graceful session shutdown failed")
        await super().shutdown(sockets=sockets)


def _find_state(app: object) -> GatewayState | None:
    # uvicorn wraps the app in middleware; walk down to the FastAPI instance.
    seen = 0
    while app is not None and seen < 10:
        if isinstance(app, FastAPI):
            return getattr(app.state, "gateway", None)
        app = getattr(app, "app", None)
        seen += 1
    return None


def uvicorn_config(app: FastAPI, settings: Settings, *, port: int | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        log_level=settings.log_level.lower(),
        log_config=None,  # our logging setup applies
        access_log=False,
        # The app checks VOXGATE_MAX_FRAME_BYTES itself so it can say why; uvicorn's hard cap
        # only guards memory against absurd frames.
        ws_max_size=max(
            16 * 1024 * 1024, settings.max_frame_bytes * 4, settings.compat_max_event_bytes + 65536
        ),
        ws_ping_interval=20.0,
        # Every browser offers permessage-deflate; on PCM it costs 4-6% CPU per frame and saves
        # almost nothing (docs/benchmarks.md), so audio links go uncompressed.
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_deadline_s)),
        lifespan="on",
        # h11 enforces the header-size bound below while parsing (httptools buffers any size
        # first); only the HTTP handshake is parsed this way, WebSocket frames are not.
        http="h11",
        h11_max_incomplete_event_size=64 * 1024,
    )


def serve(settings: Settings) -> None:
    from voxgate.gateway.app import create_app

    app = create_app(settings)
    server = VoxgateServer(uvicorn_config(app, settings))
    # `run()` uses uvicorn's loop choice: uvloop when installed (uvicorn[standard]), which cut
    # the gateway's CPU per relayed frame by 15-30% in the relay benchmark.
    server.run()
