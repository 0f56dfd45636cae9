"""What the GPT-Live engine sends and reads: built once here, so the engine reads as behaviour.

Text reaches GPT-Live in three append events, each a plain string of at most 500 tokens:
`session.instructions.append` (a standing developer rule), `session.thinking.append` (silent
context) and `session.commentary.append` (context the model says in its own words). voxgate maps
a typed `user_message` to commentary, framed as the user's words, so the model answers it
aloud (thinking would only inform a later answer), and a `context_update` to thinking. Text
longer than one append goes as several: the leading parts as thinking, the last as the event
itself.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson

from voxgate.engines.base import StartOptions

RATE = 24000
BYTES_PER_MS = 48  # PCM16 mono @ 24 kHz
AUDIO_FORMAT = {"type": "audio/pcm", "rate": RATE}
#: One append holds at most 500 tokens; about four characters a token, with a margin.
APPEND_CHARS = 1800
#: Startup history: at most 128 messages and about 8,192 tokens.
HISTORY_MESSAGES = 128
HISTORY_CHARS = 24_000

APPEND_PREFIX = b'{"type":"session.input_audio.append","audio":"'
APPEND_SUFFIX = b'"}'
CLOSE_EVENT = '{"type":"session.close"}'

#: Errors that no retry can fix: the key, the account, or a configuration GPT-Live refuses.
FATAL_CODES = {
    "invalid_api_key", "insufficient_quota", "account_deactivated", "billing_hard_limit_reached",
    "credit_balance_exhausted",
}  # fmt: skip
CONFIG_CODES = {
    "unknown_parameter", "invalid_model", "model_not_found", "invalid_value", "invalid_type",
    "missing_required_parameter", "model_not_allowed",
}  # fmt: skip

NO_TOOLS = (
    "This gateway has no tools for that request. Tell the user briefly that you cannot do it "
    "here, and carry on with the conversation."
)


def event_id() -> str:
    return f"evt_{uuid.uuid4().hex[:20]}"


def audio_frame(pcm: bytes) -> bytes:
    """`session.input_audio.append` for `pcm` as UTF-8 text, without building a dict or
    decoding (the hot path: send it with `text=True`)."""
    return APPEND_PREFIX + base64.b64encode(pcm) + APPEND_SUFFIX


def session_start(
    model: str, options: StartOptions, history: list[tuple[str, str]], tools_model: str = ""
) -> str:
    """`session.start` from the start options: prompt (instructions and personality), voice,
    the conversation so far as startup `input`, and, when the session has tools, Responses
    delegation to `tools_model` with them as function tools (without tools the delegation is
    left out: client delegation, GPT-Live's default)."""
    audio: dict[str, Any] = {"format": AUDIO_FORMAT}
    if options.voice:
        audio["output"] = {"voice": options.voice}
    session: dict[str, Any] = {
        "model": model,
        "instructions": options.system_prompt(),
        "audio": audio,
    }
    items = history_items(history)
    if items:
        session["input"] = items
    if options.tools:
        session["delegation"] = responses_delegation(tools_model, options)
    return orjson.dumps({"type": "session.start", "event_id": event_id(), "session": session}).decode()


def responses_delegation(tools_model: str, options: StartOptions) -> dict[str, Any]:
    """`{type: "responses"}`: GPT-Live's backend model gets the session's tools as function
    tools, and may call several at once."""
    tools = [
        {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
        for t in options.tools
    ]
    return {"type": "responses", "responses": {
        "model": tools_model, "tools": tools, "parallel_tool_calls": True,
    }}  # fmt: skip


def function_output(call_id: str, output: str) -> str:
    """`response.item.create` answering one backend function call (no ack)."""
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return orjson.dumps({"type": "response.item.create", "event_id": event_id(), "item": item}).decode()


def response_create() -> str:
    """`response.create`: the backend goes on once every open call has its output."""
    return orjson.dumps({"type": "response.create", "event_id": event_id()}).decode()


def tool_note(name: str, arguments: str, output: str | None) -> str:
    """A tool call as the conversation remembers it in a new session's startup `input` (a
    developer message: GPT-Live's `input` holds messages only, no call items)."""
    said = "no result (the call did not finish)" if output is None else output
    return f"Earlier in this conversation the tool {name} was called with {arguments or '{}'} and returned: {said}"


def history_items(history: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Startup `input` messages for earlier turns: the newest that fit GPT-Live's limits."""
    items: list[dict[str, Any]] = []
    budget = HISTORY_CHARS
    for role, text in reversed(history):
        text = text.strip()
        if not text:
            continue
        if len(items) >= HISTORY_MESSAGES or len(text) > budget:
            break
        budget -= len(text)
        if role == "assistant":
            part = {"type": "output_text", "text": text}
        else:
            role = "user" if role == "user" else "developer"
            part = {"type": "input_text", "text": text}
        items.append({"type": "message", "role": role, "content": [part]})
    items.reverse()
    return items


def appends(kind: str, text: str, delegation_id: str | None = None) -> list[str]:
    """`session.<kind>.append` events for `text`, split so each fits one append: leading parts
    as silent thinking, the last as `kind`."""
    parts = [text[i : i + APPEND_CHARS] for i in range(0, len(text), APPEND_CHARS)] or [""]
    events = []
    for i, part in enumerate(parts):
        this = kind if i == len(parts) - 1 else "thinking"
        event = {"type": f"session.{this}.append", "event_id": event_id(), "content": part,
                 "delegation_id": delegation_id}  # fmt: skip
        events.append(orjson.dumps(event).decode())
    return events


def typed_message(text: str) -> str:
    return f'The user typed this message instead of saying it; answer it aloud: "{text}"'


def context_text(payload: dict[str, Any]) -> str:
    return (
        "Context from the application (the user did not say this; use it, do not read it out): "
        + orjson.dumps(payload).decode()
    )


__all__ = [
    "APPEND_CHARS",
    "BYTES_PER_MS",
    "CLOSE_EVENT",
    "CONFIG_CODES",
    "FATAL_CODES",
    "NO_TOOLS",
    "RATE",
    "appends",
    "audio_frame",
    "context_text",
    "event_id",
    "function_output",
    "history_items",
    "response_create",
    "responses_delegation",
    "session_start",
    "tool_note",
    "typed_message",
]
