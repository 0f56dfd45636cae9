"""Scripted tool calls for the simulators: a model that calls functions when the user's words
match a trigger, the same way in every simulator (OpenAI Realtime, chat completions,
ElevenLabs), and answers with the outputs it got back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class ToolTrigger:
    """A scripted function call: when the user's latest words contain `phrase`, the model
    answers with a call of each `(name, arguments)` in `calls` (several: parallel calls)
    instead of speaking; once every output is back it speaks them (`tool_answer`).

    `arguments` may be a dict (sent as JSON) or a string sent as is, so a test can make the
    model produce arguments that are not JSON. A call of a tool the session did not declare
    is made only with `undeclared=True` (a model that invents a tool name)."""

    phrase: str
    calls: tuple[tuple[str, dict[str, Any] | str], ...]
    undeclared: bool = False

    @classmethod
    def one(
        cls,
        phrase: str,
        name: str,
        arguments: dict[str, Any] | str | None = None,
        undeclared: bool = False,
    ) -> ToolTrigger:
        return cls(phrase, ((name, arguments if arguments is not None else {}),), undeclared)


def triggered_calls(
    triggers: Iterable[ToolTrigger], said: str, declared: set[str]
) -> list[tuple[str, str]]:
    """(name, arguments JSON text) of the first trigger whose phrase `said` contains."""
    said = said.lower()
    for trigger in triggers:
        names = {name for name, _ in trigger.calls}
        if trigger.phrase.lower() in said and (trigger.undeclared or names <= declared):
            return [
                (name, args if isinstance(args, str) else orjson.dumps(args).decode())
                for name, args in trigger.calls
            ]
    return []


def tool_answer(outputs: list[str]) -> str:
    """What the model says once it has the outputs: it quotes them."""
    return "The tools said: " + "; ".join(outputs) + "."


__all__ = ["ToolTrigger", "tool_answer", "triggered_calls"]
