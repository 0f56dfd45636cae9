"""OpenAI-compatible endpoint: existing OpenAI Realtime (GA) clients use voxgate as a drop-in.

`GET /v1/realtime?model=...` (WebSocket) speaks the OpenAI Realtime GA protocol unchanged; the
gateway dials OpenAI with *its own* key and relays events both ways. What the client gains over
talking to OpenAI directly: the provider key never leaves the server, and voxgate's auth, origin
checks, session caps, rate/size limits, timeouts, metrics and stored transcripts all apply.

Why a relay and not the engine seam: a compat client already speaks OpenAI's protocol, so
translating it to the neutral protocol and back would cost CPU on every audio frame and lose
features (tools, custom session fields) the client relies on. The relay therefore does as
little as possible on the hot path:

- client -> upstream: `input_audio_buffer.append` frames are recognised by a prefix check on
  the raw text (compact JSON from browsers, `json.dumps` spacing from the Python SDK) and
  forwarded untouched; only their length is counted (audio rate limit, metrics).
- upstream -> client: `response.output_audio.delta` frames are recognised the same way and
  forwarded untouched; the item id is read with one bounded `str.find` so the audio heard per
  item is known for truncation.
- Everything else is rare (a few events per turn) and is parsed with orjson to read
  transcripts, errors and turn boundaries. Parsed frames are still forwarded as the original
  text, so the client sees exactly what OpenAI sent.

Beta-shaped clients (`OpenAI-Beta: realtime=v1`, subprotocol `openai-beta.realtime-v1`) get the
same `beta_api_shape_disabled` error event and close 4000 that OpenAI sends; beta is not
translated (the SDK's GA interface has been available since openai 1.103).

Rejections are OpenAI-shaped (`{"type":"error","error":{...}}` after accepting the socket) and
close with codes the official SDKs never auto-reconnect on (4xxx, 1009), except a server
shutdown, which closes 1001: on a restart a reconnect is exactly what a client should do.

`POST /v1/realtime/client_secrets` passes an authenticated user's request through to OpenAI,
signed with the server key, so browser code written for ephemeral keys keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
import orjson
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.websockets import WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from voxgate.gateway.auth import (
    BEARER_SUBPROTOCOL_PREFIX,
    AuthError,
    Identity,
)
from voxgate.gateway.limits import LimitExceeded, TokenBucket
from voxgate.gateway.origins import origin_allowed
from voxgate.gateway.session import close_reason
from voxgate.gateway.writer import StoreWriter
from voxgate.protocol import CloseCode
from voxgate.store.base import TurnRecord
from voxgate.turns import heard_prefix

if TYPE_CHECKING:
    from voxgate.gateway.state import GatewayState

log = logging.getLogger("voxgate.openai_compat")

router = APIRouter(tags=["openai-compatible"])

#: The engine name compat sessions carry in metrics, `/ws/status` and stored conversations.
ENGINE_NAME = "openai-compat"
#: Subprotocols of OpenAI's browser WebSocket convention (§1.1 of the protocol notes).
REALTIME_SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
#: OpenAI's close code for a beta-shaped client (not an SDK reconnect code).
BETA_CLOSE = 4000
#: PCM16 mono at 24 kHz, the only PCM rate GA allows.
BYTES_PER_S = 48000

# Hot-path prefixes. Browsers (`JSON.stringify`) send compact JSON, the Python SDK sends
# `json.dumps` output with ", " / ": " separators; OpenAI sends compact JSON with `type` first.
_APPEND_PREFIXES = (
    '{"type":"input_audio_buffer.append"',
    '{"type": "input_audio_buffer.append"',
)
_APPEND_OVERHEAD = 48  # `{"type": "input_audio_buffer.append", "audio": "` + `"}`
_DELTA_PREFIX = '{"type":"response.output_audio.delta"'
_DELTA_MARK = '"type":"response.output_audio.delta"'
_DELTA_OVERHEAD = 200  # everything in a delta event that is not base64 audio, roughly
_ITEM_ID_MARK = '"item_id":"'
#: Query parameters passed upstream. Never `token` (a voxgate credential) and never `call_id`
#: (it would attach the server's key to somebody else's WebRTC/SIP call).
_FORWARDED_QUERY = ("model", "intent")
#: Anything in a provider error body that looks like an API key.
_KEY_LIKE = re.compile(r"(sk-[A-Za-z0-9_\-*]{3,}|ek_[A-Za-z0-9_\-]{6,})")


def openai_error(
    code: str, message: str, *, type_: str = "invalid_request_error", event_id: str | None = None
) -> dict[str, Any]:
    """An `error` server event in OpenAI's GA shape (§14), so SDK users read it as usual."""
    return {
        "type": "error",
        "event_id": f"event_{uuid.uuid4().hex[:20]}",
        "error": {
            "type": type_,
            "code": code,
            "message": message,
            "param": None,
            "event_id": event_id,
        },
    }


class _End(Exception):
    """Ends a compat session: how to close the client socket and what to tell it first."""

    def __init__(
        self,
        close_code: int,
        reason: str = "",
        error: dict[str, Any] | None = None,
        *,
        client_gone: bool = False,
    ) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason
        self.error = error
        self.client_gone = client_gone


@dataclass(slots=True)
class _Turn:
    role: str
    item_id: str | None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    text: str = ""
    audio_bytes: int = 0
    stored: bool = False
    stored_id: int | None = None
    truncated_ms: int | None = None


# ------------------------------------------------------------------------------------------------
# Handshake helpers
# ------------------------------------------------------------------------------------------------


def _offered_subprotocols(websocket: WebSocket) -> list[str]:
    header = websocket.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def _select_subprotocol(offered: list[str]) -> str | None:
    """`realtime` when offered (browsers fail the handshake unless one is selected); otherwise
    the first offer that carries no credential, and a credential one only as a last resort."""
    if REALTIME_SUBPROTOCOL in offered:
        return REALTIME_SUBPROTOCOL
    for proto in offered:
        if not proto.startswith((KEY_SUBPROTOCOL_PREFIX, BEARER_SUBPROTOCOL_PREFIX)):
            return proto
    return offered[0] if offered else None


def _client_token(websocket: WebSocket, offered: list[str]) -> str | None:
    """The caller's voxgate token: SDK `Authorization: Bearer`, OpenAI's browser subprotocol
    `openai-insecure-api-key.<token>`, voxgate's `voxgate.bearer.<token>`, or `?token=`."""
    header = websocket.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
        if token:
            return token
    for proto in offered:
        if proto.startswith(KEY_SUBPROTOCOL_PREFIX):
            return proto[len(KEY_SUBPROTOCOL_PREFIX) :] or None
        if proto.startswith(BEARER_SUBPROTOCOL_PREFIX):
            return proto[len(BEARER_SUBPROTOCOL_PREFIX) :] or None
    return websocket.query_params.get("token") or None


def _identify(state: GatewayState, websocket: WebSocket, offered: list[str]) -> Identity:
    authenticator = state.authenticator
    if not authenticator.enabled:
        return authenticator.anonymous()
    token = _client_token(websocket, offered)
    if not token:
        raise AuthError(
            "authentication required: pass your voxgate token as the API key "
            "(Authorization: Bearer <token>) or as the 'openai-insecure-api-key.<token>' "
            "subprotocol; the gateway holds the OpenAI key"
        )
    return authenticator.verify_token(token)


def _is_beta(websocket: WebSocket, offered: list[str]) -> bool:
    return "realtime=v1" in websocket.headers.get("openai-beta", "").replace(" ", "") or (
        BETA_SUBPROTOCOL in offered
    )


def _upstream_url(state: GatewayState, websocket: WebSocket) -> tuple[str, str]:
    """-> (upstream URL, model)."""
    params = websocket.query_params
    model = params.get("model") or state.settings.openai_realtime_model
    query: dict[str, str] = {"model": model}
    for name in _FORWARDED_QUERY[1:]:
        value = params.get(name)
        if value:
            query[name] = value
    base = state.settings.openai_url
    joiner = "&" if "?" in base else "?"
    return base + joiner + urlencode(query), model


# ------------------------------------------------------------------------------------------------
# The WebSocket endpoint
# ------------------------------------------------------------------------------------------------


@router.websocket("/v1/realtime")
async def openai_realtime_ws(websocket: WebSocket) -> None:
    """OpenAI Realtime GA over WebSocket, relayed to OpenAI with the server's key."""
    state: GatewayState = websocket.app.state.gateway
    await serve_compat(state, websocket)


async def serve_compat(state: GatewayState, websocket: WebSocket) -> None:
    """Handshake checks (origin, auth, beta, limits, breaker, upstream), then one relay."""
    settings = state.settings
    metrics = state.metrics
    state.websockets_open += 1
    metrics.websockets_open.inc()
    identity: Identity | None = None
    acquired = False
    upstream: ClientConnection | None = None
    try:
        offered = _offered_subprotocols(websocket)
        subprotocol = _select_subprotocol(offered)

        async def reject(
            code: str, message: str, close_code: int, type_: str = "invalid_request_error"
        ) -> None:
            # Accept first so the client can read why: a bare HTTP 403 says nothing to an SDK.
            metrics.errors_total.labels(code).inc()
            if websocket.application_state == WebSocketState.CONNECTING:
                await websocket.accept(subprotocol=subprotocol)
            await websocket.send_text(
                orjson.dumps(openai_error(code, message, type_=type_)).decode()
            )
            await websocket.close(close_code, close_reason(f"{type_}.{code}"))

        if state.shutting_down:
            await reject("server_shutdown", "the server is shutting down; reconnect shortly",
                         CloseCode.GOING_AWAY, "server_error")  # fmt: skip
            return
        if not origin_allowed(websocket, settings):
            await reject(
                "forbidden_origin",
                f"origin '{websocket.headers.get('origin')}' is not allowed (VOXGATE_ALLOWED_ORIGINS)",
                CloseCode.FORBIDDEN_ORIGIN,
            )
            return
        try:
            identity = _identify(state, websocket, offered)
        except AuthError as exc:
            await reject("unauthorized", exc.message, CloseCode.UNAUTHORIZED)
            return
        if _is_beta(websocket, offered):
            await reject(
                "beta_api_shape_disabled",
                "voxgate's OpenAI-compatible endpoint supports only the GA Realtime interface, "
                "like OpenAI since the beta shutdown in May 2026: use client.realtime.connect() "
                "(openai>=1.103), not client.beta.realtime.connect(), and send no "
                "'OpenAI-Beta: realtime=v1' header or 'openai-beta.realtime-v1' subprotocol.",
                BETA_CLOSE,
            )
            return
        try:
            state.limiter.acquire(identity.user_id, per_user=not identity.anonymous)
            acquired = True
        except LimitExceeded as exc:
            await reject("session_limit", exc.message, CloseCode.LIMIT)
            return
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        if not key:
            await reject(
                "engine_unavailable",
                "the gateway has no OpenAI API key configured (OPENAI_API_KEY)",
                CloseCode.ENGINE_UNAVAILABLE,
                "server_error",
            )
            return
        breaker = state.breaker("openai")
        if not breaker.allow():
            await reject(
                "upstream_unavailable",
                "OpenAI is failing to accept connections; new sessions are paused for "
                f"{breaker.retry_after_s():.0f} s (circuit breaker open)",
                CloseCode.ENGINE_UNAVAILABLE,
                "server_error",
            )
            return
        url, model = _upstream_url(state, websocket)
        # Accept before dialling: the client's handshake completes at once (its open timeout is
        # often shorter than ours for OpenAI), and whatever it sends meanwhile waits in the
        # socket's receive buffer until the relay starts.
        await websocket.accept(subprotocol=subprotocol)
        started = time.monotonic()
        try:
            upstream = await _dial(state, url, key)
        except _UpstreamRefused as exc:
            breaker.record(False)
            metrics.upstream_connect_seconds.labels(ENGINE_NAME, "error").observe(
                time.monotonic() - started
            )
            await reject(
                "upstream_unavailable", exc.message, CloseCode.UPSTREAM_FAILED, "server_error"
            )
            return
        breaker.record(True)
        metrics.upstream_connect_seconds.labels(ENGINE_NAME, "ok").observe(
            time.monotonic() - started
        )
        if state.shutting_down:  # the server began shutting down while we dialled
            await reject("server_shutdown", "the server is shutting down; reconnect shortly",
                         CloseCode.GOING_AWAY, "server_error")  # fmt: skip
            return
        session = CompatSession(state, websocket, upstream, identity, model)
        state.sessions[session.id] = session
        try:
            await session.run()
        finally:
            state.sessions.pop(session.id, None)
    except Exception:
        log.exception("openai-compat handler failed")
        with contextlib.suppress(Exception):
            await websocket.close(CloseCode.INTERNAL)
    finally:
        if upstream is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(upstream.close(), 2.0)
        if acquired and identity is not None:
            state.limiter.release(identity.user_id)
        state.websockets_open -= 1
        metrics.websockets_open.dec()


class _UpstreamRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def _dial(state: GatewayState, url: str, key: str) -> ClientConnection:
    """Open the upstream socket with the server's key and nothing of the client's headers."""
    settings = state.settings
    ping = settings.upstream_ping_interval_s or None
    try:
        return await connect(
            url,
            additional_headers={"Authorization": f"Bearer {key}"},
            compression=None,
            ping_interval=ping,
            ping_timeout=ping,
            max_size=None,
            open_timeout=settings.start_timeout_s,
            close_timeout=2,
            user_agent_header="voxgate",
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise _UpstreamRefused(
                f"OpenAI rejected the gateway's API key (HTTP {status}); the operator must check "
                "OPENAI_API_KEY"
            ) from None
        raise _UpstreamRefused(
            f"OpenAI refused the connection (HTTP {status}); try again shortly"
        ) from None
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        raise _UpstreamRefused(f"could not connect to OpenAI Realtime ({reason})") from None


# ------------------------------------------------------------------------------------------------
# One relayed session
# ------------------------------------------------------------------------------------------------


class CompatSession:
    """One OpenAI-protocol client relayed to one upstream OpenAI session.

    Three tasks in one `TaskGroup` (client->upstream, upstream->client, watchdog); whichever
    ends first ends the session. Turn writes go through a separate writer task (the first job
    creates the conversation), drained with a deadline afterwards, so the relay never waits on
    the database and finished turns survive a dying session.
    """

    engine_name = ENGINE_NAME

    def __init__(
        self,
        state: GatewayState,
        websocket: WebSocket,
        upstream: ClientConnection,
        identity: Identity,
        model: str,
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.ws = websocket
        self.upstream = upstream
        self.identity = identity
        self.id = identity.session_id or uuid.uuid4().hex
        self.user_id = identity.user_id
        self.model = model
        self.conversation_id: str | None = None
        self.started = True
        self.started_at = time.time()
        self.last_activity = time.monotonic()
        self.audio_in_bytes = 0
        self.audio_out_bytes = 0
        self.turns_stored = 0
        s = self.settings
        self._control_bucket = TokenBucket.per_minute(s.control_messages_per_min)
        rate_cap = BYTES_PER_S * s.audio_rate_multiple
        # Measured in base64 characters' worth of PCM; a two-second burst like the neutral session.
        self._audio_bucket = TokenBucket(capacity=rate_cap * 2, rate=rate_cap)
        self._last_rate_error = 0.0
        self._turns: dict[str, _Turn] = {}
        self._turn_order: deque[str] = deque()
        self._turn_mark: float | None = None
        self._awaiting_audio = False
        self._awaiting_transcript = False
        self._writer = StoreWriter(f"compat session {self.id}")
        self._shutdown = asyncio.Event()
        self._shutdown_reason = "server_shutdown"
        self._flushed_in = 0
        self._flushed_out = 0

    # --- the shape `/ws/status`, `/api/realtime/sessions` and shutdown expect ------------------

    def info(self) -> dict[str, Any]:
        return {
            "sessionId": self.id,
            "userId": self.user_id,
            "engine": ENGINE_NAME,
            "conversationId": self.conversation_id,
            "started": self.started,
            "startedAt": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "audioInSeconds": round(self.audio_in_bytes / BYTES_PER_S, 3),
            "audioOutSeconds": round(self.audio_out_bytes / BYTES_PER_S, 3),
            "turns": self.turns_stored,
            "status": "connected",
            "model": self.model,
        }

    def request_shutdown(self, reason: str = "server_shutdown") -> None:
        self._shutdown_reason = reason
        self._shutdown.set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Relay until either side ends; never raises."""
        metrics = self.state.metrics
        metrics.sessions_total.labels(ENGINE_NAME).inc()
        metrics.active_sessions.labels(ENGINE_NAME).inc()
        self._writer.enqueue(self._create_conversation)
        self._writer.start()
        ended = _End(CloseCode.NORMAL)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._client_to_upstream(), name="compat-in")
                group.create_task(self._upstream_to_client(), name="compat-out")
                group.create_task(self._watchdog(), name="compat-watchdog")
        except* _End as eg:
            ended = eg.exceptions[0]  # type: ignore[assignment]
        except* Exception as eg:  # a bug must not take the process down
            log.exception("compat session %s failed", self.id, exc_info=eg.exceptions[0])
            ended = _End(
                CloseCode.INTERNAL,
                "internal error",
                openai_error("internal", "internal error in the gateway", type_="server_error"),
            )
        finally:
            await self._finish(ended)

    async def _finish(self, ended: _End) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.upstream.close(), 2.0)
        if ended.error is not None:
            self.state.metrics.errors_total.labels(str(ended.error["error"]["code"])).inc()
        if not ended.client_gone and self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    if ended.error is not None:
                        await self.ws.send_text(orjson.dumps(ended.error).decode())
                    await self.ws.close(ended.close_code, close_reason(ended.reason))
        # Turns that were cut short but never got a final transcript: keep what we have.
        for turn in list(self._turns.values()):
            if turn.truncated_ms is not None and not turn.stored and turn.text:
                self._store_turn(turn)
        await self._writer.finish(self.settings.shutdown_deadline_s)
        if self.conversation_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.state.store.end_conversation(self.conversation_id), 5.0)
        self._flush_metrics()
        m = self.state.metrics
        m.active_sessions.labels(ENGINE_NAME).dec()
        m.session_duration.labels(ENGINE_NAME).observe(time.time() - self.started_at)
        log.info(
            "compat session %s ended (close %s%s)",
            self.id,
            ended.close_code,
            f": {ended.reason}" if ended.reason else "",
        )

    def _flush_metrics(self) -> None:
        # Audio counters are summed locally per frame and flushed once a second: no lock and no
        # float maths per frame on the hot path.
        m = self.state.metrics
        if self.audio_in_bytes != self._flushed_in:
            m.audio_in_seconds.inc((self.audio_in_bytes - self._flushed_in) / BYTES_PER_S)
            self._flushed_in = self.audio_in_bytes
        if self.audio_out_bytes != self._flushed_out:
            m.audio_out_seconds.inc((self.audio_out_bytes - self._flushed_out) / BYTES_PER_S)
            self._flushed_out = self.audio_out_bytes

    async def _watchdog(self) -> None:
        s = self.settings
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._shutdown.wait(), self.state.tuning.watchdog_tick_s)
            self._flush_metrics()
            if self._shutdown.is_set():
                raise _End(
                    CloseCode.GOING_AWAY,
                    self._shutdown_reason,
                    openai_error(
                        self._shutdown_reason,
                        "the gateway is restarting; reconnect to continue",
                        type_="server_error",
                    ),
                )
            if time.monotonic() - self.last_activity > s.idle_timeout_s:
                raise _End(
                    CloseCode.IDLE_TIMEOUT,
                    "idle timeout",
                    openai_error(
                        "idle_timeout",
                        f"closing an idle session: nothing received for {s.idle_timeout_s:.0f} s",
                    ),
                )
            if time.time() - self.started_at > s.max_session_s:
                raise _End(
                    CloseCode.IDLE_TIMEOUT,
                    "session expired",
                    openai_error(
                        "session_expired",
                        f"the session reached the gateway's maximum duration of "
                        f"{s.max_session_s:.0f} s",
                    ),
                )

    # --- client -> upstream --------------------------------------------------------------------

    async def _client_to_upstream(self) -> None:
        receive = self.ws.receive
        send_up = self.upstream.send
        max_frame = self.settings.max_frame_bytes
        audio_take = self._audio_bucket.take
        try:
            while True:
                message = await receive()
                text = message.get("text")
                if text is None:
                    if message["type"] == "websocket.disconnect":
                        raise _End(
                            message.get("code") or CloseCode.NORMAL,
                            "client closed",
                            client_gone=True,
                        )
                    data = message.get("bytes") or b""
                    if len(data) > max_frame:
                        self._too_big(len(data))
                    text = data.decode("utf-8", "replace")  # OpenAI reads binary frames as JSON too
                self.last_activity = time.monotonic()
                n = len(text)
                if n > max_frame // 4 and len(text.encode()) > max_frame:
                    self._too_big(len(text.encode()))
                if text.startswith(_APPEND_PREFIXES):
                    # Hot path: forwarded untouched, only its length counted.
                    nbytes = (n - _APPEND_OVERHEAD) * 3 >> 2
                    if not audio_take(nbytes):
                        await self._audio_rate_error()
                        continue
                    self.audio_in_bytes += nbytes
                    await send_up(text)
                    continue
                if not await self._client_event(text):
                    continue
                await send_up(text)
        except ConnectionClosed as exc:
            raise self._upstream_closed(exc) from None

    async def _client_event(self, text: str) -> bool:
        """A rare client event: rate-limit it and read what the store needs. -> forward?"""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            event = None
        etype = event.get("type") if isinstance(event, dict) else None
        if etype == "input_audio_buffer.append":  # an append with other key order or spacing
            audio = event.get("audio") if isinstance(event, dict) else None
            nbytes = len(audio) * 3 >> 2 if isinstance(audio, str) else 0
            if not self._audio_bucket.take(nbytes):
                await self._audio_rate_error()
                return False
            self.audio_in_bytes += nbytes
            return True
        if not self._control_bucket.take():
            self.state.metrics.errors_total.labels("rate_limited").inc()
            await self._send_client(
                openai_error(
                    "rate_limited",
                    f"too many events: the gateway allows {self.settings.control_messages_per_min} "
                    "non-audio events per minute; this event was dropped",
                    event_id=event.get("event_id") if isinstance(event, dict) else None,
                )
            )
            return False
        if not isinstance(event, dict):
            return True  # malformed: OpenAI answers with its own error event
        if etype == "conversation.item.create":
            self._on_item_create(event)
        elif etype == "conversation.item.truncate":
            self._on_truncate(event)
        elif etype in ("response.create", "input_audio_buffer.commit"):
            self._mark_turn()
        return True

    def _too_big(self, n: int) -> None:
        limit = self.settings.max_frame_bytes
        raise _End(
            CloseCode.MESSAGE_TOO_BIG,
            "message too big",
            openai_error(
                "payload_too_large",
                f"an event of {n} bytes exceeds the gateway's limit of {limit} bytes "
                "(VOXGATE_MAX_FRAME_BYTES); send audio in smaller chunks",
            ),
        )

    async def _audio_rate_error(self) -> None:
        now = time.monotonic()
        if now - self._last_rate_error > 1.0:  # one sentence a second is enough
            self._last_rate_error = now
            self.state.metrics.errors_total.labels("rate_limited").inc()
            await self._send_client(
                openai_error(
                    "rate_limited",
                    f"audio arrives faster than {self.settings.audio_rate_multiple:g}x real time; "
                    "audio events are being dropped",
                )
            )

    async def _send_client(self, event: dict[str, Any]) -> None:
        try:
            await self.ws.send({"type": "websocket.send", "text": orjson.dumps(event).decode()})
        except (OSError, RuntimeError, WebSocketDisconnect):
            raise _End(CloseCode.NORMAL, "client went away", client_gone=True) from None

    # --- upstream -> client --------------------------------------------------------------------

    async def _upstream_to_client(self) -> None:
        recv = self.upstream.recv
        ws_send = self.ws.send
        turns = self._turns
        while True:
            try:
                frame = await recv()
            except ConnectionClosed as exc:
                raise self._upstream_closed(exc) from None
            if isinstance(frame, bytes):
                frame = frame.decode("utf-8", "replace")
            if frame.startswith(_DELTA_PREFIX) or _DELTA_MARK in frame[:160]:
                # Hot path: assistant audio, forwarded untouched.
                nbytes = (len(frame) - _DELTA_OVERHEAD) * 3 >> 2
                self.audio_out_bytes += nbytes
                start = frame.find(_ITEM_ID_MARK, 0, 300)
                if start >= 0:
                    start += len(_ITEM_ID_MARK)
                    end = frame.find('"', start, start + 80)
                    if end > start:
                        item_id = frame[start:end]
                        turn = turns.get(item_id)
                        if turn is None:
                            turn = self._turn("assistant", item_id)
                        turn.audio_bytes += nbytes
                if self._awaiting_audio:
                    self._first_audio()
            else:
                self._server_event(frame)
            try:
                await ws_send({"type": "websocket.send", "text": frame})
            except (OSError, RuntimeError, WebSocketDisconnect):
                raise _End(CloseCode.NORMAL, "client went away", client_gone=True) from None

    def _upstream_closed(self, exc: ConnectionClosed) -> _End:
        """Mirror OpenAI's close to the client (1000 normal, 4000 rejection, 1001 expiry...)."""
        rcvd = exc.rcvd
        if rcvd is not None and rcvd.code not in (1005, 1006, 1015) and 1000 <= rcvd.code < 5000:
            return _End(rcvd.code, rcvd.reason or "upstream closed")
        return _End(
            CloseCode.UPSTREAM_FAILED,
            "upstream connection lost",
            openai_error(
                "upstream_error",
                "the gateway lost its connection to OpenAI; start a new session",
                type_="server_error",
            ),
        )

    def _server_event(self, frame: str) -> None:
        """A rare upstream event: read transcripts, errors and turn boundaries from it."""
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        etype = event.get("type")
        if etype == "conversation.item.input_audio_transcription.completed":
            turn = self._turn("user", str(event.get("item_id") or ""))
            turn.text = str(event.get("transcript") or "")
            if turn.text.strip() and not turn.stored:
                self._store_turn(turn)
        elif etype == "response.output_audio_transcript.delta":
            if self._awaiting_transcript:
                self._first_transcript()
            turn = self._turn("assistant", str(event.get("item_id") or ""))
            turn.text += str(event.get("delta") or "")
        elif etype in ("response.output_audio_transcript.done", "response.output_text.done"):
            turn = self._turn("assistant", str(event.get("item_id") or ""))
            text = (
                event.get("transcript") if etype.endswith("transcript.done") else event.get("text")
            )
            turn.text = str(text or "")
            if not turn.stored and turn.text:
                self._store_turn(turn)
        elif etype == "response.output_text.delta":
            if self._awaiting_transcript:
                self._first_transcript()
        elif etype == "input_audio_buffer.speech_stopped":
            self._mark_turn()
        elif etype == "error":
            err = event.get("error") or {}
            code = err.get("code") if isinstance(err, dict) else None
            self.state.metrics.errors_total.labels(f"upstream:{code or 'unknown'}").inc()

    # --- turns ---------------------------------------------------------------------------------

    def _mark_turn(self) -> None:
        self._turn_mark = time.monotonic()
        self._awaiting_audio = True
        self._awaiting_transcript = True

    def _first_audio(self) -> None:
        self._awaiting_audio = False
        if self._turn_mark is not None:
            self.state.metrics.turn_first_audio_seconds.labels(ENGINE_NAME).observe(
                time.monotonic() - self._turn_mark
            )

    def _first_transcript(self) -> None:
        self._awaiting_transcript = False
        if self._turn_mark is not None:
            self.state.metrics.turn_first_transcript_seconds.labels(ENGINE_NAME).observe(
                time.monotonic() - self._turn_mark
            )

    def _turn(self, role: str, item_id: str) -> _Turn:
        turn = self._turns.get(item_id)
        if turn is None:
            turn = _Turn(role, item_id)
            self._turns[item_id] = turn
            self._turn_order.append(item_id)
            while len(self._turn_order) > 64:
                self._turns.pop(self._turn_order.popleft(), None)
        return turn

    def _on_item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if (
            not isinstance(item, dict)
            or item.get("type") != "message"
            or item.get("role") != "user"
        ):
            return
        parts = item.get("content") or []
        text = " ".join(
            str(p.get("text") or "")
            for p in parts
            if isinstance(p, dict) and p.get("type") == "input_text"
        ).strip()
        if not text:
            return
        self._mark_turn()
        item_id = item.get("id")
        turn = _Turn("user", str(item_id) if item_id else None, text=text)
        self._store_turn(turn)

    def _on_truncate(self, event: dict[str, Any]) -> None:
        """The client says the listener heard only `audio_end_ms` of an assistant item."""
        item_id = event.get("item_id")
        played = event.get("audio_end_ms")
        if not isinstance(item_id, str) or not isinstance(played, int):
            return
        turn = self._turns.get(item_id)
        if turn is None or turn.role != "assistant":
            return
        turn.truncated_ms = played
        if turn.stored:
            heard = self._heard(turn)
            self._writer.mark_interrupted(self.state.store, turn, heard, played)
        # Not stored yet: `_store_turn` records it as interrupted when the transcript is final.

    def _heard(self, turn: _Turn) -> str:
        total_ms = turn.audio_bytes / BYTES_PER_S * 1000.0
        return heard_prefix(turn.text, turn.truncated_ms or 0, total_ms)

    def _store_turn(self, turn: _Turn) -> None:
        turn.stored = True
        interrupted = turn.truncated_ms is not None
        audio_ms = int(turn.audio_bytes / BYTES_PER_S * 1000) if turn.audio_bytes else None
        record = TurnRecord(
            role=turn.role,  # type: ignore[arg-type]
            text=turn.text,
            item_id=turn.item_id,
            started_at=turn.started_at,
            ended_at=datetime.now(UTC),
            interrupted=interrupted,
            heard_text=self._heard(turn) if interrupted else None,
            audio_ms=turn.truncated_ms if interrupted else audio_ms,
        )
        self.turns_stored += 1
        self.state.metrics.turns_total.labels(turn.role).inc()
        store = self.state.store

        async def write() -> None:
            if self.conversation_id is None:
                return  # the conversation could not be created; nothing to attach turns to
            saved = await store.add_turn(self.conversation_id, record)
            turn.stored_id = saved.id

        self._writer.enqueue(write)

    async def _create_conversation(self) -> None:
        record = await self.state.store.create_conversation(
            self.user_id, ENGINE_NAME, {"model": self.model, "sessionId": self.id}
        )
        self.conversation_id = record.id



# ------------------------------------------------------------------------------------------------
# POST /v1/realtime/client_secrets
# ------------------------------------------------------------------------------------------------


def _http_error(
    status: int, code: str, message: str, type_: str = "invalid_request_error"
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        status_code=status,
    )


@router.post("/v1/realtime/client_secrets")
async def client_secrets(request: Request) -> Response:
    """Mint an OpenAI ephemeral client secret with the server's key, for an authenticated user.

    The body is OpenAI's own (`expires_after`, `session`) and is forwarded unchanged; the answer
    is OpenAI's JSON (`value`, `expires_at`, `session`). Errors keep OpenAI's status and shape,
    with anything key-like masked.
    """
    state: GatewayState = request.app.state.gateway
    settings = state.settings
    authenticator = state.authenticator
    try:
        # A single-use /ws session token must not mint provider secrets (HTTP routes refuse them).
        identity, _ = authenticator.authenticate(request, allow_session_token=False)
    except AuthError as exc:
        state.metrics.errors_total.labels("unauthorized").inc()
        return _http_error(401, "unauthorized", exc.message)
    if identity.anonymous:
        # Same rule as `POST /api/realtime/session {"direct": ...}`: provider secrets spend
        # the operator's money, so they are for authenticated users only.
        state.metrics.errors_total.labels("unauthorized").inc()
        return _http_error(
            403, "unauthorized",
            "provider client secrets need an authenticated user: enable VOXGATE_AUTH=jwt",
        )  # fmt: skip
    who = f"user:{identity.user_id}"
    limit = settings.token_requests_per_min
    buckets: dict[str, TokenBucket] = _secret_buckets(request)
    bucket = buckets.get(who)
    if bucket is None:
        if len(buckets) > 10_000:
            buckets.clear()
        bucket = buckets[who] = TokenBucket.per_minute(limit)
    if not bucket.take():
        state.metrics.errors_total.labels("rate_limited").inc()
        return _http_error(
            429, "rate_limited", f"too many client secrets: the limit is {limit} per minute",
        )  # fmt: skip
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if not key:
        return _http_error(
            503, "engine_unavailable",
            "the gateway has no OpenAI API key configured (OPENAI_API_KEY)", "server_error",
        )  # fmt: skip
    body = await request.body()
    url = settings.openai_api_base.rstrip("/") + "/realtime/client_secrets"
    try:
        async with httpx.AsyncClient(timeout=settings.start_timeout_s) as client:
            resp = await client.post(
                url,
                content=body or b"{}",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
    except httpx.HTTPError as exc:
        return _http_error(
            502, "upstream_unavailable",
            f"could not reach OpenAI to create a client secret ({type(exc).__name__})", "server_error",
        )  # fmt: skip
    if resp.status_code >= 400:
        text = resp.text.replace(key, "****")
        text = _KEY_LIKE.sub(lambda m: m.group(0)[:3] + "****", text)
        return Response(text, status_code=resp.status_code, media_type="application/json")
    log.info("client secret minted for %s", identity.user_id)
    return Response(resp.content, status_code=resp.status_code, media_type="application/json")


def _secret_buckets(request: Request) -> dict[str, TokenBucket]:
    app_state = request.app.state
    buckets = getattr(app_state, "openai_compat_secret_buckets", None)
    if buckets is None:
        buckets = {}
        app_state.openai_compat_secret_buckets = buckets
    return buckets


__all__ = ["ENGINE_NAME", "CompatSession", "openai_error", "router", "serve_compat"]
