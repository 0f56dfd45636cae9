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
from voxgate.gateway.live import ENDED_BY_ADMIN
from voxgate.gateway.shared import SharedUnavailable
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
    shared = state.shared
    try:
        nodes = await shared.nodes()
        shared_ok = True
    except SharedUnavailable:
        nodes, shared_ok = [], False
    ready = store_ok and not state.shutting_down
    degraded = not all(e["available"] for e in engines.values()) or not shared_ok
    body = {
        "status": "ok" if ready and not degraded else "degraded",
        "version": __version__,
        "engines": engines,
        "store": "ok" if store_ok else "error",
        # Redis down is not "not ready": every node shares it, so a balancer that took them all
        # out would cut live conversations that do not need it. New admissions say why instead.
        "shared": {"kind": shared.kind, "status": "ok" if shared_ok else "error"},
        "node": shared.node_id,
        "nodes": nodes,
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
    """This node's counts, and the whole cluster's under `cluster` (null when the shared state
    cannot be reached)."""
    state = _state(request)
    body = state.status()
    try:
        nodes = await state.shared.nodes()
        sessions = await state.shared.sessions()
        body["cluster"] = {
            "nodes": len(nodes),
            "sessions": sum(1 for s in sessions if s.get("started")),
            "pending": sum(1 for s in sessions if not s.get("started")),
        }
    except SharedUnavailable:
        body["cluster"] = None
    body["node"] = state.shared.node_id
    return body


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
    """Every live session of the cluster; each names the `node` that holds it."""
    try:
        return {"sessions": await _state(request).shared.sessions()}
    except SharedUnavailable as exc:
        raise HTTPException(503, exc.message) from None


@router.get("/api/realtime/sessions/{session_id}", tags=["ops"])
async def get_session(
    session_id: str, request: Request, _: Identity = Depends(admin_identity)
) -> dict[str, Any]:
    state = _state(request)
    local = state.sessions.get(session_id)
    if local is not None:  # fresher than the directory, which is renewed every few seconds
        return {**local.info(), "node": state.shared.node_id}
    try:
        info = await state.shared.session(session_id)
    except SharedUnavailable as exc:
        raise HTTPException(503, exc.message) from None
    if info is None:
        raise HTTPException(404, "no live session with that id")
    return info


@router.delete("/api/realtime/sessions/{session_id}", tags=["ops"], status_code=202)
async def end_session(
    session_id: str, request: Request, _: Identity = Depends(admin_identity)
) -> dict[str, Any]:
    """End a live session on whichever node holds it. The client is told
    `status: disconnected` with reason `ended_by_admin`, then the socket closes (1000)."""
    try:
        found = await _state(request).shared.end_session(session_id, ENDED_BY_ADMIN)
    except SharedUnavailable as exc:
        raise HTTPException(503, exc.message) from None
    if not found:
        raise HTTPException(404, "no live session with that id")
    return {"sessionId": session_id, "ending": True}


@router.post("/api/realtime/nodes/{node}/drain", tags=["ops"], status_code=202)
async def drain_node(node: str, request: Request, _: Identity = Depends(admin_identity)) -> dict[str, Any]:
    """Drain one gateway process (a `node` from `/health`), as SIGTERM does: it stops
    admitting, answers `/health` with 503, tells its clients to reconnect (they land on other
    nodes and resume), finishes writing turns and exits."""
    try:
        found = await _state(request).shared.drain_node(node)
    except SharedUnavailable as exc:
        raise HTTPException(503, exc.message) from None
    if not found:
        raise HTTPException(404, "no live node with that name")
    return {"node": node, "draining": True}


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
