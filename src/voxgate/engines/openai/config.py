"""The settings the OpenAI engine reads, resolved once from `Settings` when a session starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from voxgate.engines.upstream import UpstreamOptions, url_problem

if TYPE_CHECKING:
    from voxgate.config import Settings


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    """Exactly what `OpenAIRealtimeEngine` needs: tests can build one without a `Settings`."""

    #: The server's key; "" when OPENAI_API_KEY is not set (`start()` then says so). Kept out
    #: of the repr so a logged config never shows it.
    api_key: str = field(repr=False)
    url: str
    model: str
    voice: str
    transcription_model: str
    #: Open a fresh upstream session this long after the last one (0: never), before OpenAI's
    #: 60-minute limit ends it at a moment of its choosing.
    recycle_s: float
    first_byte_timeout_s: float
    upstream: UpstreamOptions

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIConfig:
        key = settings.openai_api_key
        return cls(
            api_key=key.get_secret_value() if key is not None else "",
            url=settings.openai_url,
            model=settings.openai_realtime_model,
            voice=settings.openai_voice,
            transcription_model=settings.openai_transcription_model,
            recycle_s=settings.openai_session_recycle_s,
            first_byte_timeout_s=settings.first_byte_timeout_s,
            upstream=UpstreamOptions.from_settings(settings),
        )

    def problem(self) -> str | None:
        """Why no session can start with this configuration, or None (no network: cheap)."""
        if not self.api_key:
            return "OPENAI_API_KEY is not set: configure an OpenAI API key to use the openai engine"
        return url_problem(self.url, "VOXGATE_OPENAI_URL", ("ws", "wss"))


__all__ = ["OpenAIConfig"]
