"""`create_app(settings)`: HTTP routes, the `/ws` endpoint and the static browser client."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles

from voxgate import __version__
from voxgate import protocol as P
from voxgate.config import Settings
from voxgate.engines import ENGINES, engine_class
from voxgate.gateway.auth import SUBPROTOCOL, AuthError, Identity, admin_identity
from voxgate.gateway.limits import HeaderSizeLimit, LimitExceeded
from voxgate.gateway.origins import BrowserHostGuard, origin_allowed
from voxgate.gateway.session import GatewaySession, close_reason
from voxgate.gateway.state import GatewayState, SessionTuning
from voxgate.protocol import CloseCode, ErrorCode
from voxgate.store.base import ConversationStore

log = logging.getLogger("voxgate.gateway")


def create_app(
    settings: Settings | None = None,
    store: ConversationStore | None = None,
    tuning: SessionTuning | None = None,
) -> FastAPI:
    settings = settings or Settings()
    state = GatewayState(settings, store, tuning)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.store.open()
        log.info(
            "voxgate %s ready: engine=%s auth=%s store=%s",
            __version__,
            settings.engine,
            settings.auth,
            _redact_url(settings.database_url),
        )
        try:
            yield
        finally:
            await state.shutdown_sessions()
            await state.store.close()

    app = FastAPI(
        title="voxgate",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.gateway = state
    app.state.settings = settings
    app.state.store = state.store
    app.state.authenticator = state.authenticator
    app.state.metrics = state.metrics

    # --- health and status --------------------------------------------------------------------

    @app.get("/health", tags=["ops"])
    async def health() -> JSONResponse:
        """Liveness and readiness; public, carries no secrets."""
        try:
            store_ok = await asyncio.wait_for(state.store.ping(), 2.0)
        except Exception:
            store_ok = False
        engines: dict[str, dict[str, Any]] = {}
        for name in settings.engines_allowed_for_clients():
            breaker = state.breaker(name)
            engines[name] = {
                "available": _engine_available(name, settings) and breaker.state != "open",
                "breaker": breaker.state,
            }
        ready = store_ok and not state.shutting_down
        degraded = not all(e["available"] for e in engines.values())
        body = {
            "status": "ok" if ready and not degraded else "degraded",
            "version": __version__,
            "engines": engines,
            "store": "ok" if store_ok else "error",
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/ws/status", tags=["ops"])
    async def ws_status() -> dict[str, Any]:
        return state.status()

    @app.get("/api/config", tags=["client"])
    async def client_config() -> dict[str, Any]:
        """What the browser page needs to render its choices."""
        return {
            "engines": settings.engines_allowed_for_clients(),
            "defaultEngine": settings.engine,
            "auth": settings.auth,
            "protocol": P.PROTOCOL_VERSION,
            "version": __version__,
        }

    @app.get("/api/realtime/sessions", tags=["ops"])
    async def list_sessions(_: Identity = Depends(admin_identity)) -> dict[str, Any]:
        return {"sessions": [s.info() for s in state.sessions.values()]}

    @app.get("/api/realtime/sessions/{session_id}", tags=["ops"])
    async def get_session(session_id: str, _: Identity = Depends(admin_identity)) -> dict[str, Any]:
        session = state.sessions.get(session_id)
        if session is None:
            raise HTTPException(404, "no live session with that id")
        return session.info()

    @app.get("/api/realtime/metrics", tags=["ops"])
    async def metrics_json() -> dict[str, Any]:
        summary = state.metrics.summary()
        summary["live"] = state.status()
        return summary

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics_prometheus() -> Response:
        return Response(
            state.metrics.prometheus_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    # --- the neutral protocol -------------------------------------------------------------------

    @app.websocket("/ws")
    async def ws_endpoint(websocket: WebSocket) -> None:
        await serve_websocket(state, websocket)

    _include_optional_routers(app)
    # Absurd headers get a clear 431 whichever HTTP parser uvicorn runs (issue 5).
    app.add_middleware(HeaderSizeLimit)
    app.add_middleware(BrowserHostGuard, settings=settings)  # DNS rebinding, auth off

    # The browser client last, so API routes win.
    web_dir = importlib.resources.files("voxgate") / "web"
    if web_dir.is_dir() and (web_dir / "index.html").is_file():
        app.mount("/", StaticFiles(directory=str(web_dir), html=True), name="web")
    return app


async def serve_websocket(state: GatewayState, websocket: WebSocket) -> None:
    """Handshake checks (origin, auth, limits), then one `GatewaySession`."""
    settings = state.settings
    metrics = state.metrics
    state.websockets_open += 1
    metrics.websockets_open.inc()
    identity: Identity | None = None
    acquired = False
    try:
        offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        fallback_proto = SUBPROTOCOL if SUBPROTOCOL in offered else (offered[0] if offered else None)

        async def reject(code: ErrorCode, message: str, close_code: int) -> None:
            # Accept first so the client can read why: a bare HTTP 403 says nothing.
            metrics.errors_total.labels(code.value).inc()
            await websocket.accept(subprotocol=fallback_proto)
            await websocket.send_text(P.encode(P.error_message(code, message, fatal=True)))
            await websocket.close(close_code, close_reason(message))

        if state.shutting_down:
            await reject(ErrorCode.UPSTREAM_UNAVAILABLE, "the server is shutting down", CloseCode.GOING_AWAY)
            return
        if not origin_allowed(websocket, settings):
            await reject(
                ErrorCode.FORBIDDEN_ORIGIN,
                f"origin '{websocket.headers.get('origin')}' is not allowed (VOXGATE_ALLOWED_ORIGINS)",
                CloseCode.FORBIDDEN_ORIGIN,
            )
            return
        try:
            identity, subprotocol = state.authenticator.authenticate(websocket)
        except AuthError as exc:
            await reject(ErrorCode.UNAUTHORIZED, exc.message, CloseCode.UNAUTHORIZED)
            return
        try:
            state.limiter.acquire(identity.user_id, per_user=not identity.anonymous)
            acquired = True
        except LimitExceeded as exc:
            await reject(ErrorCode.SESSION_LIMIT, exc.message, CloseCode.LIMIT)
            return
        await websocket.accept(subprotocol=subprotocol)
        session = GatewaySession(state, websocket, identity, state.tuning.outbox_factory)
        state.sessions[session.id] = session
        try:
            await session.run()
        finally:
            state.sessions.pop(session.id, None)
    except Exception:
        log.exception("websocket handler failed")
        with contextlib.suppress(Exception):
            await websocket.close(CloseCode.INTERNAL)
    finally:
        if acquired and identity is not None:
            state.limiter.release(identity.user_id)
        state.websockets_open -= 1
        metrics.websockets_open.dec()


def _engine_available(name: str, settings: Settings) -> bool:
    if name not in ENGINES:
        return False
    try:
        cls = engine_class(name)
    except Exception:
        return False
    check = getattr(cls, "availability", None)
    if check is None:
        return True
    try:
        return check(settings) is None
    except Exception:
        return False


def _include_optional_routers(app: FastAPI) -> None:
    """Routers owned by other modules; each is optional so a partial install still serves."""
    import importlib

    for module_name in (
        "voxgate.gateway.api_conversations",
        "voxgate.gateway.api_users",
        "voxgate.gateway.api_tokens",
        "voxgate.gateway.openai_compat",
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        app.include_router(module.router)


def _redact_url(url: str) -> str:
    """Hide a password in a database URL for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
