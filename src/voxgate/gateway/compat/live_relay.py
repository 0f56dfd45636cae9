"""One `/v1/live/sessions` session: a GPT-Live client relayed to GPT-Live, both ways.

The same relay as `/v1/realtime` (`CompatSession`: audio forwarded untouched on the hot path,
limits, metrics, the shared lifecycle) with GPT-Live's dialect:

- Audio is `session.input_audio.append` one way and a continuous `session.output_audio.delta`
  stream (silence included, no item ids) the other.
- `session.start` is checked before it goes upstream: the Live model against the operator's
  allowlist (`VOXGATE_ALLOWED_MODELS`, default `OPENAI_LIVE_MODEL`), and a delegation backend's
  model, instructions and tools likewise; once a start is under way or done, another is
  answered here and never forwarded.
- Transcripts arrive as timed fragments: they are grouped into turns (`grouping`, as the engine
  does) and stored as each ends, or when the session does.
- Usage is cumulative seconds (`session.usage.updated`, final in `session.closed`): what it
  grows by is metered as `voxgate_billed_seconds_total`.
- Errors the gateway sends are GPT-Live-shaped (`live_error`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection

from voxgate.engines.openai_live.grouping import LiveTurn, TranscriptTurns
from voxgate.gateway.auth import Identity
from voxgate.gateway.compat.live_handshake import LIVE_ENGINE_NAME, live_error
from voxgate.gateway.compat.policy import Violation, check_live_session
from voxgate.gateway.compat.relay import CompatSession
from voxgate.gateway.live import SessionEnded
from voxgate.gateway.state import GatewayState

_ROLES: dict[str, Any] = {
    "session.input_transcript.delta": "user",
    "session.output_transcript.delta": "assistant",
}


class LiveRelaySession(CompatSession):
    """One GPT-Live client relayed to one GPT-Live session with the server's key."""

    label = "live compat session"
    engine_label: ClassVar[str] = LIVE_ENGINE_NAME
    provider: ClassVar[str] = "OpenAI GPT-Live"
    append_type: ClassVar[str] = "session.input_audio.append"
    append_heads: ClassVar[tuple[str, ...]] = (
        '{"type":"session.input_audio.append","audio":"',
        '{"type": "session.input_audio.append", "audio": "',
    )
    delta_prefix: ClassVar[str] = '{"type":"session.output_audio.delta"'
    delta_mark: ClassVar[str] = '"type":"session.output_audio.delta"'

    def __init__(
        self, state: GatewayState, websocket: WebSocket, upstream: ClientConnection, identity: Identity
    ) -> None:
        # The model is known once GPT-Live has started the session (`session.start`).
        super().__init__(state, websocket, upstream, identity, model="")
        self._starting = False
        self._started_upstream = False
        self._grouper = TranscriptTurns()
        self._billed = 0.0
        self._billed_counter = state.metrics.billed_seconds.labels(LIVE_ENGINE_NAME)

    # --- dialect -------------------------------------------------------------------------------
    def _start_loops(self, group: Any) -> None:
        # The conversation is created when GPT-Live starts the session (its model is known
        # then); a socket that never starts one stores nothing.
        self._count_start()
        group.create_task(self._client_to_upstream(), name="live-compat-in")
        group.create_task(self._upstream_to_client(), name="live-compat-out")

    def _error_event(
        self,
        code: str,
        message: str,
        *,
        type_: str = "invalid_request_error",
        event_id: str | None = None,
        param: str | None = None,
    ) -> dict[str, Any]:
        return live_error(code, message, type_=type_, client_event_id=event_id, param=param)

    def _check_event(self, event: dict[str, Any]) -> Violation | None:
        etype = event["type"]
        if etype == "session.start":
            if self._starting or self._started_upstream:
                return Violation(
                    "session_already_started",
                    "session.start may be sent once per connection, and this session has "
                    "already started (or is starting); this event was not forwarded",
                )
            return check_live_session(self.settings, event.get("session"), user_models=self.identity.models)
        if etype == "session.update":
            return check_live_session(self.settings, event.get("session"), user_models=self.identity.models)
        return None

    def _observe_client_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "session.start":
            self._starting = True

    def _audio_out(self, frame: str, nbytes: int) -> None:
        """GPT-Live's output is one continuous stream (silence included) with no item ids:
        only its length is counted (`audio_out_bytes`)."""

    def _server_event(self, frame: str) -> None:
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        etype = event.get("type")
        if etype in _ROLES:
            self._fragment(_ROLES[etype], event)
        elif etype == "session.started":
            self._on_started(event)
        elif etype == "session.usage.updated":
            self._bill(event.get("usage"))
        elif etype == "session.closed":
            self._bill(event.get("usage"))
            for turn in self._grouper.close_all():
                self._store(turn)
        elif etype == "error":
            self._starting = False  # a refused start may be sent again
            err = event.get("error") or {}
            code = err.get("code") if isinstance(err, dict) else None
            self.state.metrics.errors_total.labels(f"upstream:{code or 'unknown'}").inc()

    # --- what the relay reads ----------------------------------------------------------------
    def _on_started(self, event: dict[str, Any]) -> None:
        self._starting, self._started_upstream = False, True
        session = event.get("session")
        if not isinstance(session, dict):
            session = {}
        self.model = str(session.get("model") or "")
        metadata = {"model": self.model, "sessionId": self.id, "liveSessionId": session.get("id")}
        self.turns.open_conversation_later(self.user_id, LIVE_ENGINE_NAME, metadata)

    def _fragment(self, role: Any, event: dict[str, Any]) -> None:
        delta, start, end = event.get("delta"), event.get("start_ms"), event.get("end_ms")
        if not isinstance(delta, str) or not isinstance(start, int) or not isinstance(end, int):
            return
        ended, _, _ = self._grouper.add(role, delta, start, end)
        for turn in ended:
            self._store(turn)
        turns = self.turns
        if role == "user":
            turns.mark()  # the answer's clock starts at the user's latest words
        elif turns.awaiting_transcript:
            turns.first_transcript()

    def _store(self, turn: LiveTurn) -> None:
        text = turn.text.strip()
        if text:
            self.turns.store_text(turn.role, turn.item_id, text)

    def _bill(self, usage: Any) -> None:
        seconds = usage.get("seconds") if isinstance(usage, dict) else None
        if isinstance(seconds, int | float) and seconds > self._billed:
            self._billed_counter.inc(seconds - self._billed)
            self._billed = float(seconds)

    def _store_cut_off(self, ended: SessionEnded) -> None:
        # Fragments are text the client already saw: the open turns are kept as they stand.
        for turn in self._grouper.close_all():
            self._store(turn)


__all__ = ["LiveRelaySession"]
