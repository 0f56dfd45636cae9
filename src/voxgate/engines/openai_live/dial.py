"""Opening a GPT-Live socket with the server's key: one dial for the engine and the relay.

The key travels in the Authorization header only (never in a URL or a sentence); GPT-Live
needs no subprotocol and no beta header. A refusal reads the same on both paths.
"""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection

from voxgate.engines.base import EngineUnavailable
from voxgate.engines.upstream import DialFailed, UpstreamOptions, dial_ws


def unreachable(reason: str) -> EngineUnavailable:
    """GPT-Live could not be reached or stopped answering mid-handshake: worth retrying."""
    return EngineUnavailable(
        f"could not connect to OpenAI GPT-Live ({reason}); check the network and "
        "VOXGATE_OPENAI_LIVE_URL",
        upstream=True,
        retryable=True,
    )


async def dial_live(url: str, key: str, options: UpstreamOptions) -> ClientConnection:
    """Open a GPT-Live socket with `key`; raises `EngineUnavailable` with a sentence for users.

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
            f"OpenAI rejected the gateway's API key for GPT-Live (HTTP {exc.status}): the "
            "operator must check OPENAI_API_KEY",
            upstream=True,
            retryable=False,
        )
    if exc.bad_url:
        return EngineUnavailable(
            "VOXGATE_OPENAI_LIVE_URL is not a valid WebSocket URL (expected "
            "wss://host/v1/live/sessions)",
            upstream=True,
            retryable=False,
        )
    if exc.status is not None:
        return EngineUnavailable(
            f"OpenAI GPT-Live refused the connection (HTTP {exc.status}); try again shortly",
            upstream=True,
            retryable=True,
        )
    return unreachable(exc.reason)


__all__ = ["dial_live", "unreachable"]
