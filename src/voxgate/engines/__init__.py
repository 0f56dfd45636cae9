"""Conversation engines behind one seam, chosen by configuration (never by code).

Each engine module is imported lazily, so a missing optional dependency of one engine never
breaks another, and `voxgate serve` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from voxgate.engines.base import ConversationEngine, EngineUnavailable

if TYPE_CHECKING:
    from voxgate.config import Settings

#: engine name -> "module:Class"
ENGINES: dict[str, str] = {
    "openai": "voxgate.engines.openai.engine:OpenAIRealtimeEngine",
    "cascade": "voxgate.engines.cascade.engine:CascadeEngine",
    "elevenlabs": "voxgate.engines.elevenlabs.engine:ElevenLabsEngine",
    "openai-live": "voxgate.engines.openai_live.engine:OpenAILiveEngine",
}


def engine_class(name: str) -> type[ConversationEngine]:
    target = ENGINES.get(name)
    if target is None:
        raise EngineUnavailable(f"unknown engine '{name}'; known engines: {', '.join(ENGINES)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineUnavailable(f"engine '{name}' cannot be loaded: {exc}") from exc
    cls: type[ConversationEngine] = getattr(module, class_name)
    return cls


def create_engine(name: str, settings: Settings) -> ConversationEngine:
    """A new, unstarted engine, built by the engine class from the settings it needs."""
    return engine_class(name).from_settings(settings)


__all__ = ["ENGINES", "ConversationEngine", "EngineUnavailable", "create_engine", "engine_class"]
