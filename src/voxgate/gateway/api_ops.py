"""Operations routes: health, live status, the browser's config, live sessions, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from voxgate import __version__
from voxgate import protocol as P
from voxgate.config import Settings
from voxgate.engines import ENGINES, engine_class
from voxgate.gateway.auth import (
    Identity,
    admin_identity,
    current_identity,
    extract_token,
    operations_reader,
)
from voxgate.gateway.choices import default_engine, engines_for
from voxgate.gateway.compat.policy import COMPAT_ENGINE, models_for
from voxgate.gateway.state import GatewayState

router = APIRouter()


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


@router.get("/health", tags=["ops"])
async def health(request: Request) -> JSONResponse:
    """Liveness and readiness; public, carries no secrets."""
    state = _state(request)
    settings = state.settings
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


def _engine_available(name: str, settings: Settings) -> bool:
    if name not in ENGINES:
        return False
    try:
        return engine_class(name).availability(settings) is None
    except Exception:
        return False  # an engine that cannot even say whether it runs does not


@router.get("/ws/status", tags=["ops"], dependencies=[Depends(operations_reader)])
async def ws_status(request: Request) -> dict[str, Any]:
    return _state(request).status()


@router.get("/api/config", tags=["client"])
async def client_config(request: Request) -> JSONResponse:
    """What the browser page needs to render its choices.

    Public. Called with a user's JWT (auth on), it answers for that user: the engines and models
    their token's claims leave them, and the engine a `start` naming none would get (their
    saved one while they may use it). An invalid token is a 401, not a silent public answer.
    """
    state = _state(request)
    settings = state.settings
    identity = Identity("public")
    tailored = state.authenticator.enabled and extract_token(request)[0] is not None
    if tailored:
        identity = current_identity(request)
    engines = engines_for(settings, identity)
    saved = await state.store.get_user_settings(identity.user_id) if tailored else None
    body = {
        "engines": engines,
        "defaultEngine": default_engine(settings, engines, saved.engine if saved else None),
        "models": models_for(settings, identity.models) if COMPAT_ENGINE in engines else [],
        "auth": settings.auth,
        "protocol": P.PROTOCOL_VERSION,
        "version": __version__,
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"} if tailored else None)


@router.get("/api/realtime/sessions", tags=["ops"])
async def list_sessions(request: Request, _: Identity = Depends(admin_identity)) -> dict[str, Any]:
    return {"sessions": [s.info() for s in _state(request).sessions.values()]}


@router.get("/api/realtime/sessions/{session_id}", tags=["ops"])
async def get_session(
    session_id: str, request: Request, _: Identity = Depends(admin_identity)
) -> dict[str, Any]:
    session = _state(request).sessions.get(session_id)
    if session is None:
        raise HTTPException(404, "no live session with that id")
    return session.info()


@router.get("/api/realtime/metrics", tags=["ops"], dependencies=[Depends(operations_reader)])
async def metrics_json(request: Request) -> dict[str, Any]:
    state = _state(request)
    summary = state.metrics.summary()
    summary["live"] = state.status()
    return summary


@router.get(
    "/metrics", tags=["ops"], response_class=Response, dependencies=[Depends(operations_reader)]
)
async def metrics_prometheus(request: Request) -> Response:
    return Response(
        _state(request).metrics.prometheus_text(),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )
