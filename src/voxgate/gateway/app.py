"""`create_app(settings)`: HTTP routes, the two WebSocket endpoints and the static browser client."""

from __future__ import annotations

import asyncio
import importlib
import importlib.resources
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from voxgate import __version__
from voxgate.config import Settings
from voxgate.engines import engine_class
from voxgate.engines.upstream import cancel_and_wait
from voxgate.gateway.api_ops import router as ops_router
from voxgate.gateway.limits import HeaderSizeLimit
from voxgate.gateway.neutral.endpoint import router as neutral_router
from voxgate.gateway.origins import BrowserHostGuard, CrossOriginAccess
from voxgate.gateway.state import GatewayState, SessionTuning
from voxgate.store.base import ConversationStore

log = logging.getLogger("voxgate.gateway")

#: Routers owned by other modules; each is optional so a partial install still serves.
OPTIONAL_ROUTERS = (
    "voxgate.gateway.api_conversations",
    "voxgate.gateway.api_users",
    "voxgate.gateway.api_tokens",
    "voxgate.gateway.compat.endpoint",
    "voxgate.gateway.compat.client_secrets",
    "voxgate.gateway.compat.live_endpoint",
)


def create_app(
    settings: Settings | None = None,
    store: ConversationStore | None = None,
    tuning: SessionTuning | None = None,
) -> FastAPI:
    settings = settings or Settings()
    state = GatewayState(settings, store, tuning)
    app = FastAPI(
        title="voxgate",
        version=__version__,
        lifespan=_lifespan(state),
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.gateway = state
    app.state.settings = settings
    app.state.store = state.store
    app.state.authenticator = state.authenticator
    app.state.metrics = state.metrics
    # The conversations API deletes a conversation's WAVs with it: without this, they stayed.
    app.state.audio_log = state.audio_log
    app.include_router(ops_router)
    app.include_router(neutral_router)
    _include_optional_routers(app)
    # Absurd headers get a clear 431 whichever HTTP parser uvicorn runs.
    app.add_middleware(HeaderSizeLimit)
    # Inside the rebinding guard: a page under an untrusted Host is refused before CORS.
    app.add_middleware(CrossOriginAccess, settings=settings)
    app.add_middleware(BrowserHostGuard, settings=settings)  # DNS rebinding, auth off
    _mount_browser_client(app)
    return app


async def _warm_up_engines(settings: Settings) -> None:
    """Load the engines' shared models before the server takes its first connection, so no
    user waits for them; an engine that cannot warm up is logged and left to say why when a
    session asks for it (its availability check already tells /health)."""
    for name in settings.engines_allowed_for_clients():
        try:
            await engine_class(name).warm_up(settings)
        except Exception as exc:
            log.warning("engine %s: could not load its models at startup: %s", name, exc)


def _lifespan(state: GatewayState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    settings = state.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.store.open()
        await _warm_up_engines(settings)
        await state.tools.open(settings)
        await state.shared.start(state)
        sweeper = None
        if settings.retention_days > 0:
            from voxgate.gateway.retention import retention_loop

            sweeper = asyncio.create_task(retention_loop(state), name="voxgate-retention")
        log.info(
            "voxgate %s ready: engine=%s auth=%s store=%s shared=%s node=%s",
            __version__, settings.engine, settings.auth, _redact_url(settings.database_url),
            _redact_url(settings.redis_url or "memory"), state.shared.node_id,
        )  # fmt: skip
        try:
            yield
        finally:
            if sweeper is not None:
                await cancel_and_wait([sweeper])
            await state.shutdown_sessions()
            await state.tools.close()
            await state.shared.close()
            await state.store.close()

    return lifespan


def _include_optional_routers(app: FastAPI) -> None:
    for module_name in OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        app.include_router(module.router)


def _mount_browser_client(app: FastAPI) -> None:
    # Mounted last, so API routes win.
    web_dir = importlib.resources.files("voxgate") / "web"
    if web_dir.is_dir() and (web_dir / "index.html").is_file():
        app.mount("/", StaticFiles(directory=str(web_dir), html=True), name="web")


def _redact_url(url: str) -> str:
    """Hide a password in a database URL for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
