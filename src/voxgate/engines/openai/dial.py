"""Opening an OpenAI Realtime socket with the server's key: one dial for the engine and the relay.

The `openai` engine and the OpenAI-compatible relay (`/v1/realtime`) both hold a socket to
OpenAI with the operator's key. They dial through here so a refusal reads the same on both
paths, and the key travels in the Authorization header only (never in a URL or a sentence).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection

from voxgate.engines.base import EngineUnavailable
from voxgate.engines.upstream import DialFailed, UpstreamOptions, dial_ws


def realtime_url(base: str, params: Mapping[str, str]) -> str:
    """`base` (VOXGATE_OPENAI_URL) with `params` (model, ...) added to any query it has."""
    parts = urlsplit(base)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def unreachable(reason: str) -> EngineUnavailable:
    """OpenAI could not be reached or stopped answering mid-handshake: worth retrying."""
    return EngineUnavailable(
        f"could not connect to OpenAI Realtime ({reason}); check the network and "
        "VOXGATE_OPENAI_URL",
        upstream=True,
        retryable=True,
    )


async def dial_openai(url: str, key: str, options: UpstreamOptions) -> ClientConnection:
    """Open a Realtime socket with `key`; raises `EngineUnavailable` with a sentence for users.

    A rejected key or a malformed URL is not retryable (only the operator can fix either);
    any other refusal or network failure is.
    """
    try:
        return await dial_ws(url, options, {"Authorization": f"Bearer {key}"})
    except DialFailed as exc:
        raise _refusal(exc) from None


def _refusal(exc: DialFailed) -> EngineUnavailable:
    if exc.auth_refused:
        return EngineUnavailable(
            f"OpenAI rejected the gateway's API key (HTTP {exc.status}): the operator must "
            "check OPENAI_API_KEY",
            upstream=True,
            retryable=False,
        )
    if exc.bad_url:
        return EngineUnavailable(
            "VOXGATE_OPENAI_URL is not a valid WebSocket URL (expected wss://host/v1/realtime)",
            upstream=True,
            retryable=False,
        )
    if exc.status is not None:
        return EngineUnavailable(
            f"OpenAI refused the connection (HTTP {exc.status}); try again shortly",
            upstream=True,
            retryable=True,
        )
    return unreachable(exc.reason)


__all__ = ["dial_openai", "realtime_url", "unreachable"]
