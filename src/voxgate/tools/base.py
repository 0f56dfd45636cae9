"""What every tool is, wherever it runs: a name, a description, a JSON Schema for its
arguments, and one way to call it. The gateway runs server tools (Python, HTTP, MCP) itself;
client tools run in the user's page and answer over the protocol."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.engines.base import ToolSpec

#: What a tool name may be: the providers' common ground (OpenAI and the chat API allow
#: `^[a-zA-Z0-9_-]{1,64}$`).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Longest tool output handed to a model, in characters; longer is cut with a note, so one
#: tool returning a whole web page cannot fill the model's context.
MAX_OUTPUT_CHARS = 16_000


class ToolError(Exception):
    """Raised by a tool (or about one) with a sentence the model can read and act on."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who a call is for: each call gets one (Python tools ask for it with a parameter
    annotated `ToolContext`)."""

    user_id: str
    conversation_id: str | None
    session_id: str
    call_id: str
    tool: str


class Tool(ABC):
    """A server tool. `invoke` gets arguments already checked against `spec.parameters`."""

    spec: ToolSpec
    #: This tool's own timeout (seconds), or None for `VOXGATE_TOOL_TIMEOUT_S`.
    timeout_s: float | None = None
    #: Where it comes from, for logs and `voxgate serve`: "python", "http" or "mcp".
    source: str = "python"

    @property
    def name(self) -> str:
        return self.spec.name

    def check(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Arguments as the tool takes them; raises `ToolError` naming what is wrong."""
        return check_schema(self.spec.parameters, arguments)

    @abstractmethod
    async def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any: ...

    async def close(self) -> None:  # noqa: B027 - most tools hold nothing
        """Release what the tool holds (HTTP clients, MCP sessions)."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"tool name {name[:70]!r} is not allowed: use 1-64 letters, digits, '_' or '-'"
        )
    return name


def parse_arguments(raw: str) -> dict[str, Any]:
    """The model's arguments (a JSON text) as an object; raises `ToolError` otherwise."""
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ToolError(f"the arguments are not valid JSON: {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise ToolError("the arguments must be a JSON object")
    return value


def check_schema(schema: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """Validate `arguments` against a JSON Schema; raises `ToolError` with the first problem."""
    import jsonschema_rs

    try:
        validator = jsonschema_rs.validator_for(schema)
    except (ValueError, jsonschema_rs.ValidationError) as exc:
        raise ToolError(f"the tool's parameter schema is invalid: {exc}") from None
    for error in validator.iter_errors(arguments):
        where = "/".join(str(p) for p in error.instance_path) or "arguments"
        raise ToolError(f"the arguments do not match the schema: {where}: {error.message}")
    return arguments


def check_parameters(schema: Any, what: str) -> dict[str, Any]:
    """A tool's parameter schema must be a JSON Schema object describing a JSON object."""
    import jsonschema_rs

    if not isinstance(schema, dict):
        raise ValueError(f"{what}: parameters must be a JSON Schema object")
    if schema.get("type", "object") != "object":
        raise ValueError(f"{what}: parameters must describe an object (type 'object')")
    try:
        jsonschema_rs.validator_for(schema)
    except (ValueError, jsonschema_rs.ValidationError) as exc:
        raise ValueError(f"{what}: parameters are not a valid JSON Schema: {exc}") from None
    return {"type": "object", **schema}


def output_text(value: Any) -> str:
    """A tool's result as the text a model reads: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        try:
            text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            text = str(value)
    if len(text) > MAX_OUTPUT_CHARS:
        text = text[:MAX_OUTPUT_CHARS] + " …(cut: the result was longer)"
    return text


def error_text(message: str) -> str:
    """What the model reads when a call failed: a JSON object with the sentence."""
    return orjson.dumps({"error": message}).decode()


__all__ = [
    "MAX_OUTPUT_CHARS",
    "Tool",
    "ToolContext",
    "ToolError",
    "check_name",
    "check_parameters",
    "check_schema",
    "error_text",
    "output_text",
    "parse_arguments",
]
