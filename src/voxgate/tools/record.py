"""How a tool call is kept in a stored conversation: one `tool` turn whose text is a JSON
object (`name`, `arguments`, `output`, `status`, `error`), so the REST API, exports and
`voxgate conversations show` read it, and a resumed conversation gives it back to the model."""

from __future__ import annotations

from typing import Any

import orjson

from voxgate.engines.base import HistoryTurn, ToolExchange


def tool_turn_text(exchange: ToolExchange, status: str, error: str | None = None) -> str:
    record: dict[str, Any] = {
        "name": exchange.name,
        "arguments": _json_or_text(exchange.arguments),
        "output": exchange.output,
        "status": status,
    }
    if error:
        record["error"] = error
    return orjson.dumps(record).decode()


def tool_history_turn(call_id: str | None, text: str) -> HistoryTurn | None:
    """The stored `tool` turn as history for an engine; None when it cannot be read."""
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        return None
    arguments = record.get("arguments")
    raw = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
    output = record.get("output")
    exchange = ToolExchange(
        call_id or f"call_{abs(hash(text)) % 10**12}",
        record["name"],
        raw,
        output if isinstance(output, str) else orjson.dumps(output).decode(),
    )
    return HistoryTurn("tool", summary(record), exchange)


def summary(record: dict[str, Any]) -> str:
    """One line for people: `get_weather({"city":"Paris"}) -> {"temp":21}`."""
    arguments = record.get("arguments")
    args = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    status = record.get("status", "done")
    result = record.get("output") if status == "done" else f"{status}: {record.get('error', '')}"
    return f"{record.get('name')}({args}) -> {result}"


def _json_or_text(raw: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


__all__ = ["summary", "tool_history_turn", "tool_turn_text"]
