"""The settings the GPT-Live engine reads, resolved once from `Settings` when a session starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from voxgate.engines.upstream import UpstreamOptions, url_problem

if TYPE_CHECKING:
    from voxgate.config import Settings


@dataclass(frozen=True, slots=True)
class OpenAILiveConfig:
    """Exactly what `OpenAILiveEngine` needs: tests can build one without a `Settings`."""

    #: The server's key (OPENAI_API_KEY); "" when unset. Kept out of the repr.
    api_key: str = field(repr=False)
    #: The primary session socket; GPT-Live takes no query string (the model goes in
    #: `session.start`).
    url: str
    model: str
    upstream: UpstreamOptions
    #: The Responses model GPT-Live delegates tool work to (sessions with tools only).
    tools_model: str = "gpt-5-mini"

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAILiveConfig:
        key = settings.openai_api_key
        return cls(
            api_key=key.get_secret_value() if key is not None else "",
            url=settings.openai_live_url,
            model=settings.openai_live_model,
            upstream=UpstreamOptions.from_settings(settings),
            tools_model=settings.openai_live_tools_model,
        )

    def problem(self) -> str | None:
        """Why no session can start with this configuration, or None (no network: cheap)."""
        if not self.api_key:
            return (
                "OPENAI_API_KEY is not set: configure an OpenAI API key to use the openai-live "
                "engine"
            )
        return url_problem(self.url, "VOXGATE_OPENAI_LIVE_URL", ("ws", "wss"))


__all__ = ["OpenAILiveConfig"]
