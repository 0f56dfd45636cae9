"""ElevenLabs' conversation messages: what the provider sends and what the gateway sends back.

One JSON object per text frame (as the official SDKs and the provider's AsyncAPI contract
define it): user audio goes up as `{"user_audio_chunk": b64}` in the agent's input format, agent
speech comes down as `audio` events with increasing integer `event_id`s, `ping` is answered with
`pong`. Everything here is a pure function of its arguments, so the engine and the simulator
agree on the provider's facts without depending on each other.
"""

from __future__ import annotations

from typing import Any

import orjson

from voxgate.engines.base import EngineUnavailable, HistoryTurn, StartOptions

#: ElevenLabs format name -> sample rate. `pcm_*` is PCM16 LE mono; `ulaw_8000` is G.711 mu-law.
FORMAT_RATES: dict[str, int] = {
    "pcm_8000": 8000,
    "pcm_16000": 16000,
    "pcm_22050": 22050,
    "pcm_24000": 24000,
    "pcm_44100": 44100,
    "pcm_48000": 48000,
    "ulaw_8000": 8000,
}

#: Server events the engine has no use for; skipped quietly (unknown types are logged).
IGNORED_TYPES = frozenset(
    {
        "vad_score",
        "internal_tentative_agent_response",
        "internal_turn_probability",
        "agent_chat_response_part",
        "agent_reasoning_response_part",
        "agent_tool_request",
        "agent_tool_response",
        "agent_tool_response_full_payload",
        "agent_response_metadata",
        "mcp_tool_call",
        "mcp_connection_status",
        "context_usage",
        "asr_initiation_metadata",
        "rich_content",
        "agent_typing",
        "guardrail_triggered",
        "external_agent_connected",
        "external_agent_disconnected",
        "conversation_initiation_metadata",
    }
)

#: Close codes of a dropped transport rather than a provider decision: worth a new conversation.
#: (1002/1008/1011 are the provider ending this conversation on purpose: fatal.)
RECONNECT_CODES = frozenset({1001, 1006, 1012, 1013})

#: What a provider close code means, for the sentence a client sees when the engine ends.
CLOSE_MEANINGS: dict[int, str] = {
    1002: "ElevenLabs ended the conversation with an error",
    1008: "ElevenLabs rejected a message and ended the conversation",
    1011: "ElevenLabs failed internally and ended the conversation",
}
LOST_MEANING = "The ElevenLabs connection was lost and could not be restored"


def int_field(value: Any) -> int:
    """An integer field such as `event_id`; a bool is no integer here (JSON `true` is no id)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer event_id, got {value!r}")
    return value


def str_field(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def audio_formats(meta: dict[str, Any]) -> tuple[str, str]:
    """The agent's (input, output) formats from `conversation_initiation_metadata`.

    Raises `EngineUnavailable` for a format voxgate cannot convert: retrying would meet the
    same agent configuration.
    """
    in_fmt = meta.get("user_input_audio_format") or "pcm_16000"
    out_fmt = meta.get("agent_output_audio_format") or "pcm_16000"
    if in_fmt not in FORMAT_RATES or out_fmt not in FORMAT_RATES:
        raise EngineUnavailable(
            f"The ElevenLabs agent uses audio formats voxgate does not know "
            f"({in_fmt!r} in, {out_fmt!r} out).",
            upstream=True,
            retryable=False,
        )
    return in_fmt, out_fmt


def conversation_override(options: StartOptions) -> dict[str, Any]:
    """`conversation_config_override` for the session's start options (empty: agent defaults)."""
    override: dict[str, Any] = {}
    agent: dict[str, Any] = {}
    if options.instructions or options.personality:
        agent["prompt"] = {"prompt": options.system_prompt()}
    first = (options.metadata or {}).get("firstMessage")
    if isinstance(first, str) and first.strip():
        agent["first_message"] = first.strip()
    if agent:
        override["agent"] = agent
    if options.voice:
        override["tts"] = {"voice_id": options.voice}
    return override


def init_message(override: dict[str, Any], user_id: str | None) -> str:
    """The first client message of a conversation."""
    init: dict[str, Any] = {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": override,
        "custom_llm_extra_body": {},
        "dynamic_variables": {},
    }
    if user_id:
        init["user_id"] = user_id
    return orjson.dumps(init).decode()


def history_text(history: list[HistoryTurn], limit_chars: int = 6000) -> str:
    """ElevenLabs cannot replay items, so prior turns go in as one background note."""
    lines = [f"{turn.role}: {turn.text}" for turn in history if turn.text]
    text = "\n".join(lines)
    if len(text) > limit_chars:
        text = "...\n" + text[-limit_chars:]
    return (
        "This conversation is being resumed. The earlier turns were:\n"
        + text
        + "\nContinue from there without repeating yourself."
    )


def tool_result(call_id: str, output: str, is_error: bool) -> dict[str, Any]:
    """The answer to a `client_tool_call` (the agent waits for it before it goes on)."""
    return {"type": "client_tool_result", "tool_call_id": call_id, "result": output,
            "is_error": is_error}  # fmt: skip


__all__ = [
    "CLOSE_MEANINGS",
    "FORMAT_RATES",
    "IGNORED_TYPES",
    "LOST_MEANING",
    "RECONNECT_CODES",
    "audio_formats",
    "conversation_override",
    "history_text",
    "init_message",
    "int_field",
    "str_field",
    "tool_result",
]
