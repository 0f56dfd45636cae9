"""Where a conversation socket goes: a signed URL (private agent) or `?agent_id=` (public one).

With `ELEVENLABS_API_KEY` set, the signed URL is fetched server-side
(`GET /convai/conversation/get-signed-url`, header `xi-api-key`): the key never leaves the
server and never appears in an error sentence. The gateway's direct-connection route hands the
same signed URL to a browser.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

import httpx

from voxgate.engines.base import EngineUnavailable
from voxgate.engines.elevenlabs.config import ElevenLabsConfig


class SignedUrlError(EngineUnavailable):
    """The signed-URL call failed; the sentence says what to fix and never contains the key."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True):
        super().__init__(message, upstream=True, retryable=retryable)
        self.status = status


def _refusal(status: int, agent_id: str) -> SignedUrlError:
    """The sentence for a non-200 answer: 401 means the key is wrong, 404 the agent id."""
    fixed = {
        401: "ElevenLabs rejected the API key (HTTP 401): check ELEVENLABS_API_KEY.",
        403: "ElevenLabs refused the signed-URL request (HTTP 403): the API key lacks access "
        f"to agent {agent_id!r} or to Conversational AI.",
        404: f"ElevenLabs does not know agent {agent_id!r} (HTTP 404): check "
        "VOXGATE_ELEVENLABS_AGENT_ID.",
    }.get(status)
    if fixed is not None:
        return SignedUrlError(fixed, status=status, retryable=False)
    return SignedUrlError(
        f"ElevenLabs answered the signed-URL request with HTTP {status}; try again later.",
        status=status,
        retryable=status == 429 or status >= 500,
    )


async def fetch_signed_url(
    config: ElevenLabsConfig, *, timeout: float = 10.0
) -> str:
    """A signed conversation URL for the configured private agent (valid ~15 minutes).

    Raises `SignedUrlError` with a sentence an operator can act on.
    """
    key, agent_id = config.api_key, config.agent_id
    if not key:
        raise SignedUrlError(
            "ELEVENLABS_API_KEY is not set; a signed URL needs it.", retryable=False
        )
    if not agent_id:
        raise SignedUrlError(
            "No ElevenLabs agent is configured: set VOXGATE_ELEVENLABS_AGENT_ID.", retryable=False
        )
    base = config.api_base.rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(
                f"{base}/convai/conversation/get-signed-url",
                params={"agent_id": agent_id},
                headers={"xi-api-key": key},
            )
    except httpx.HTTPError as exc:
        raise SignedUrlError(
            f"ElevenLabs could not be reached at {urlsplit(base).netloc or base} "
            f"({type(exc).__name__}); check the network and VOXGATE_ELEVENLABS_API_BASE."
        ) from None
    if response.status_code != 200:
        raise _refusal(response.status_code, agent_id)
    try:
        signed = response.json()["signed_url"]
    except (ValueError, KeyError, TypeError):
        signed = None
    if not isinstance(signed, str) or not signed.startswith(("ws://", "wss://")):
        raise SignedUrlError(
            "ElevenLabs answered the signed-URL request without a usable signed_url.",
            status=200,
        )
    return signed


async def conversation_url(config: ElevenLabsConfig) -> str:
    """The socket URL for one new conversation: signed when there is a key, else public."""
    if config.api_key:
        return await fetch_signed_url(config)
    sep = "&" if "?" in config.url else "?"
    return config.url + sep + urlencode({"agent_id": config.agent_id})


__all__ = ["SignedUrlError", "conversation_url", "fetch_signed_url"]
