"""What the ElevenLabs engine reads from the settings, as one frozen value.

The engine, the signed-URL call and the gateway's direct-connection route need a handful of
settings; a small view makes that set visible (and lets a test build it without a `Settings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from voxgate.engines.upstream import UpstreamOptions, url_problem

if TYPE_CHECKING:
    from voxgate.config import Settings


@dataclass(frozen=True, slots=True)
class ElevenLabsConfig:
    #: With a key, conversations use signed URLs (private agents); without one the agent must be
    #: public. The key only ever goes into the signed-URL request header.
    api_key: str | None = field(repr=False)
    agent_id: str | None
    #: The conversation socket (public agents) and the REST base (signed URLs).
    url: str
    api_base: str
    #: The whole start (signed URL, socket, metadata), and each reconnect attempt, within this.
    upstream: UpstreamOptions

    @classmethod
    def from_settings(cls, settings: Settings) -> ElevenLabsConfig:
        key = settings.elevenlabs_api_key
        return cls(
            api_key=(key.get_secret_value() or None) if key is not None else None,
            agent_id=settings.elevenlabs_agent_id or None,
            url=settings.elevenlabs_url,
            api_base=settings.elevenlabs_api_base,
            upstream=UpstreamOptions.from_settings(settings),
        )

    def problem(self) -> str | None:
        """Why no session can start with this configuration, or None (no network: cheap).

        No key is fine: a public agent needs none, and only ElevenLabs can say which it is.
        """
        if not self.agent_id:
            return (
                "No ElevenLabs agent is configured: set VOXGATE_ELEVENLABS_AGENT_ID to your "
                "agent's id (and ELEVENLABS_API_KEY for a private agent)."
            )
        if self.api_key:
            return url_problem(self.api_base, "VOXGATE_ELEVENLABS_API_BASE", ("http", "https"))
        return url_problem(self.url, "VOXGATE_ELEVENLABS_URL", ("ws", "wss"))


__all__ = ["ElevenLabsConfig"]
