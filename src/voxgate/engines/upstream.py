"""What every provider link shares: one WebSocket dial, one reconnect loop, one way to stop tasks.

The OpenAI engine, the ElevenLabs engine and the OpenAI-compatible relay each hold a socket to
a provider. They used to dial it three ways (compression from the settings in one, hard-coded in
another, a frame cap in a third); now the options are one frozen value built from the settings,
so a knob such as `VOXGATE_WS_COMPRESSION` means the same on every upstream link.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from voxgate.engines.base import EngineUnavailable

if TYPE_CHECKING:
    from voxgate.config import Settings

T = TypeVar("T")

#: A provider frame larger than this is a broken or hostile upstream, not audio: the biggest
#: legitimate events (session snapshots, long transcripts) are a few hundred KiB.
MAX_UPSTREAM_FRAME = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Exponential backoff with jitter: 1 s, 2 s, 4 s ... capped, for `attempts` tries."""

    attempts: int = 5
    base_s: float = 1.0
    max_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ReconnectPolicy:
        return cls(settings.reconnect_attempts, settings.reconnect_base_s, settings.reconnect_max_s)

    def delays(self) -> list[float]:
        return [min(self.max_s, self.base_s * (2**i)) for i in range(self.attempts)]

    def jittered(self, delay: float) -> float:
        # "Equal jitter": at least half the delay, so retries never bunch up at zero.
        return delay / 2 + random.random() * delay / 2


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """How to open, keep and reopen a provider link. One value per gateway, from the settings."""

    #: How long opening a provider session may take: the dial, and the engine's own setup
    #: on the new socket (session configuration, conversation metadata).
    start_timeout_s: float = 15.0
    #: WebSocket keepalive; None turns it off. A missed pong counts as a dropped upstream.
    ping_interval_s: float | None = 20.0
    #: permessage-deflate. Off by default: PCM barely deflates and it costs CPU on every frame.
    compression: bool = False
    #: How a dropped link is reopened.
    reconnect: ReconnectPolicy = ReconnectPolicy()

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamOptions:
        return cls(
            start_timeout_s=settings.start_timeout_s,
            ping_interval_s=settings.upstream_ping_interval_s or None,
            compression=settings.ws_compression,
            reconnect=ReconnectPolicy.from_settings(settings),
        )


class DialFailed(Exception):
    """The provider socket could not be opened. `status` is the HTTP answer, when there was one;
    `reason` says what happened in a few words, for a sentence the caller writes."""

    def __init__(self, reason: str, *, status: int | None = None, bad_url: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.bad_url = bad_url

    @property
    def auth_refused(self) -> bool:
        return self.status in (401, 403)


async def dial_ws(
    url: str, options: UpstreamOptions, headers: dict[str, str] | None = None
) -> ClientConnection:
    """Open one provider WebSocket; raises `DialFailed` (never a library exception)."""
    ping = options.ping_interval_s
    try:
        return await connect(
            url,
            additional_headers=headers,
            compression="deflate" if options.compression else None,
            ping_interval=ping,
            ping_timeout=ping,
            max_size=MAX_UPSTREAM_FRAME,
            open_timeout=options.start_timeout_s,
            close_timeout=2,
            user_agent_header="voxgate",
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise DialFailed(f"HTTP {status}", status=status) from None
    except InvalidURI:
        raise DialFailed("not a valid WebSocket URL", bad_url=True) from None
    except (OSError, InvalidHandshake, TimeoutError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        raise DialFailed(reason) from None


async def close_quietly(ws: ClientConnection | None, timeout: float = 3.0) -> None:
    """Close a provider socket, bounded in time, ignoring a peer that is already gone."""
    if ws is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), timeout)


async def reconnect(
    policy: ReconnectPolicy,
    attempt: Callable[[], Awaitable[T]],
    *,
    stopped: Callable[[], bool] = lambda: False,
) -> tuple[T | None, str]:
    """Call `attempt` with backoff until it succeeds -> (its result, "").

    Gives up -> (None, the last failure's sentence) after the policy's attempts, at once on an
    `EngineUnavailable` that retrying cannot fix (a rejected key), or when `stopped()` turns true
    (the session is ending). `attempt` signals failure by raising `EngineUnavailable`.
    """
    last = "no attempt was made"
    for delay in policy.delays():
        await asyncio.sleep(policy.jittered(delay))
        if stopped():
            return None, "stopped"
        try:
            return await attempt(), ""
        except EngineUnavailable as exc:
            last = exc.message
            if not exc.retryable:
                break
    return None, last


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object] | asyncio.Task[None] | None]) -> None:
    """Cancel each task (never the caller's own) and wait until it has really ended."""
    current = asyncio.current_task()
    for task in tasks:
        if task is None or task is current or task.done():
            continue
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


__all__ = [
    "MAX_UPSTREAM_FRAME",
    "DialFailed",
    "ReconnectPolicy",
    "UpstreamOptions",
    "cancel_and_wait",
    "close_quietly",
    "dial_ws",
    "reconnect",
]
