"""OpenAI's REST side: minting browser-safe ephemeral client secrets with the server's key.

Two routes mint them: `POST /api/realtime/session {"direct": "openai"}` answers in voxgate's
shape (through `create_client_secret`), and the OpenAI-compatible
`POST /v1/realtime/client_secrets` passes OpenAI's answer through. Both post through
`post_client_secret`, so the key handling, the timeout and the masking of anything key-like in
OpenAI's error bodies are the same on both.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from voxgate.engines.base import EngineUnavailable
from voxgate.secrets import scrub

if TYPE_CHECKING:
    from voxgate.config import Settings


class OpenAIRequestError(Exception):
    """A REST call to OpenAI failed; the message never contains the API key."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class SecretReply:
    """OpenAI's answer to a client-secret request."""

    status: int
    #: OpenAI's JSON as sent; on an error status with anything key-like masked (OpenAI quotes
    #: part of a wrong key back, and the body goes to a browser).
    body: bytes
    reason: str


async def post_client_secret(api_base: str, key: str, body: bytes, timeout: float) -> SecretReply:
    """`POST {api_base}/realtime/client_secrets` with `body` (OpenAI's own request shape).

    Any answer, error statuses included, is returned; raises `OpenAIRequestError` (502) only
    when OpenAI could not be reached at all.
    """
    url = api_base.rstrip("/") + "/realtime/client_secrets"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.post(url, content=body or b"{}", headers=headers)
    except httpx.HTTPError as exc:
        raise OpenAIRequestError(
            502, f"could not reach OpenAI to create a client secret ({type(exc).__name__})"
        ) from None
    if resp.status_code < 400:
        return SecretReply(resp.status_code, resp.content, resp.reason_phrase)
    masked = scrub(resp.text, extra=[key]).encode()
    return SecretReply(resp.status_code, masked, resp.reason_phrase)


async def create_client_secret(settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    """Mint a browser-safe ephemeral secret for a direct OpenAI connection.

    Returns OpenAI's JSON (`value`, `expires_at`, `session`). Raises `OpenAIRequestError` with
    OpenAI's own error sentence on 4xx/5xx, and `EngineUnavailable` when no key is configured.
    """
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if not key:
        raise EngineUnavailable(
            "OPENAI_API_KEY is not set: the server needs it to mint OpenAI client secrets",
            upstream=True,
            retryable=False,
        )
    reply = await post_client_secret(
        settings.openai_api_base, key, orjson.dumps(body), settings.start_timeout_s
    )
    if reply.status >= 400:
        raise OpenAIRequestError(
            reply.status,
            f"OpenAI refused to create a client secret (HTTP {reply.status}): "
            f"{_error_sentence(reply)}",
        )
    data: dict[str, Any] = orjson.loads(reply.body)
    return data


def _error_sentence(reply: SecretReply) -> str:
    """OpenAI's `error.message`, or the HTTP reason when the body has none."""
    message = ""
    with contextlib.suppress(Exception):
        message = str(orjson.loads(reply.body)["error"]["message"])
    return message or reply.reason


__all__ = ["OpenAIRequestError", "SecretReply", "create_client_secret", "post_client_secret"]
