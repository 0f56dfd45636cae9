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
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from voxgate.engines.base import EngineUnavailable, HeldAudioKind
from voxgate.pcm_b64 import Base64PCM

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
    #: User audio kept while the link is reopened, in seconds (0: none is kept).
    audio_buffer_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamOptions:
        return cls(
            start_timeout_s=settings.start_timeout_s,
            ping_interval_s=settings.upstream_ping_interval_s or None,
            compression=settings.ws_compression,
            reconnect=ReconnectPolicy.from_settings(settings),
            audio_buffer_s=settings.reconnect_audio_buffer_s,
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


def url_problem(url: str, variable: str, schemes: tuple[str, ...]) -> str | None:
    """Why `url` (the value of `variable`) cannot be dialled, as a sentence, or None.

    Checked without any network, so `/health` and `voxgate serve` can report a typo before
    the first user meets it.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return f"{variable} is not a valid URL ({exc}): {url!r}"
    if parts.scheme not in schemes or not parts.hostname:
        wanted = " or ".join(f"{s}://" for s in schemes)
        return f"{variable} must be a {wanted} URL with a host, not {url!r}"
    return None


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


class _Commit:
    """Where a manual turn end fell among the held audio."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "COMMIT"


#: Held in a `ReconnectAudioBuffer` where the client committed its turn during a reconnect.
COMMIT: Final = _Commit()


class ReconnectAudioBuffer:
    """User audio that must outlive a dropped upstream, so the provider still hears it.

    Without it, whatever the user says while the engine reconnects is lost and the assistant
    simply ignores it. One bounded queue of chunks serves two phases:

    - **Connected**: `sent` keeps the tail of the audio sent to the upstream that the provider
      has not yet taken into a turn (`committed`): a short pre-roll, or the whole utterance in
      progress once `speech(True)` says one is. If the link drops, that tail may have died
      unheard with it, so it is replayed too: an utterance that straddles the drop reaches the
      new upstream whole rather than split, and audio already committed is never sent twice.
    - **Reconnecting** (`begin` until `finish` or `discard`): `hold` keeps everything, up to
      `seconds`; beyond it the oldest goes (the newest speech is what the user still means).
      `hold_commit` marks a manual turn end in place. On restore the engine takes the items
      with `next_held` in order, sending each, until none is left; new audio keeps arriving
      through `hold` meanwhile and is sent in turn, so order is kept without a lock.

    Only positions and byte counts are tracked: the chunks are the engine's own `bytes` (or
    `Base64PCM`, the client's base64 kept undecoded; `len` is its PCM bytes alike), never
    copied. Engines report through `report` (kind, seconds), once per reconnect and kind.
    """

    #: Audio kept ahead of detected speech: covers the provider's speech detection delay and
    #: the frames in flight when the link died.
    PREROLL_MS = 1000

    def __init__(self, seconds: float, report: Callable[[HeldAudioKind, float], None]) -> None:
        self.seconds = max(0.0, seconds)
        self._report = report
        self._chunks: deque[bytes | Base64PCM | _Commit] = deque()
        self._size = 0  # audio bytes in `_chunks`
        self._base = 0  # upstream position (bytes since its session began) of the first chunk
        self._in_speech = False
        self._holding = False
        self._bytes_per_s = 48000
        self._max = self._preroll = 0
        self.configure(self._bytes_per_s)
        # This reconnect: bytes that entered, dropped, replayed; whether the client was told.
        self._entered = self._dropped = 0
        self._told = False
        self._replayed: deque[bytes | Base64PCM] = deque()
        self._replayed_size = 0
        self._replay_pos = 0

    def configure(self, bytes_per_s: int) -> None:
        """The engine's input audio rate in bytes per second (final once it has connected)."""
        self._bytes_per_s = max(1, bytes_per_s)
        self._max = round(self.seconds * self._bytes_per_s) & ~1  # round: 2.3 s is not 2.2999…
        self._preroll = min(self._max, int(self.PREROLL_MS * self._bytes_per_s / 1000) & ~1)

    @property
    def holding(self) -> bool:
        return self._holding

    @property
    def held_seconds(self) -> float:
        return self._size / self._bytes_per_s

    # --- connected ------------------------------------------------------------------------
    def sent(self, pcm: bytes | Base64PCM) -> None:
        """`pcm` went to the upstream (hot path: one append, one comparison)."""
        if not self._max:
            return
        self._chunks.append(pcm)
        self._size += len(pcm)
        limit = self._max if self._in_speech else self._preroll
        if self._size > limit:
            self._trim(limit)

    def speech(self, active: bool) -> None:
        """An utterance is (or is no longer) in progress: keep all of it, not only a pre-roll.
        Manual turns are always in progress until their commit."""
        self._in_speech = active

    def committed(self, position: int | None = None) -> None:
        """The provider took the audio up to `position` (bytes since its session began; None:
        all sent so far) into a turn: a replay must not send it again."""
        if self._holding:
            return
        chunks = self._chunks
        while chunks:
            first = chunks[0]
            n = 0 if isinstance(first, _Commit) else len(first)
            if position is not None and self._base + n > position:
                return
            chunks.popleft()
            self._size -= n
            self._base += n

    def new_session(self) -> None:
        """A fresh upstream session replaced the old one at a quiet moment (no reconnect):
        its positions start at zero and it owes nothing to the old one's tail."""
        if self._holding:
            return
        self._chunks.clear()
        self._size = self._base = 0

    # --- reconnecting -----------------------------------------------------------------------
    def begin(self) -> None:
        """The link dropped: the uncommitted tail heads what is held from now on."""
        if self._holding:
            return
        self._holding = True
        self._told = False
        self._entered, self._dropped = self._size, 0
        self._replayed.clear()
        self._replayed_size = self._replay_pos = 0

    def hold(self, pcm: bytes | Base64PCM) -> bool:
        """Keep `pcm` for the new upstream. True the first time this reconnect drops the oldest
        audio to stay within the limit: the engine tells the client, once."""
        self._chunks.append(pcm)
        n = len(pcm)
        self._size += n
        self._entered += n
        if self._size <= self._max:
            return False
        self._dropped += self._trim(self._max)
        if self._told:
            return False
        self._told = True
        return True

    def hold_commit(self) -> None:
        """The client ended its turn while the link was down: commit there when replaying."""
        self._chunks.append(COMMIT)

    def next_held(self) -> bytes | Base64PCM | _Commit | None:
        """The oldest held item, to send now; None when all of it has been taken."""
        if not self._chunks:
            return None
        item = self._chunks.popleft()
        if not isinstance(item, _Commit):
            n = len(item)
            self._size -= n
            self._replay_pos += n
            self._replayed.append(item)
            self._replayed_size += n
        else:  # the new upstream commits what was replayed so far
            self._replayed.clear()
            self._replayed_size = 0
        return item

    def finish(self) -> None:
        """The held audio has gone to the new upstream (call it as soon as `next_held` says
        None, before anything else awaits). The replayed audio that the new session has not
        committed becomes its uncommitted tail; so does anything a replay cut short by a new
        drop never sent, so the next reconnect replays it."""
        if not self._holding:
            return
        self._holding = False
        self._report_episode(discarded=0)
        unsent, unsent_size = self._chunks, self._size
        self._chunks = deque(self._replayed)
        self._chunks.extend(unsent)
        self._size = self._replayed_size + unsent_size
        self._base = self._replay_pos - self._replayed_size
        self._replayed = deque()
        self._replayed_size = self._replay_pos = 0

    def discard(self) -> None:
        """The reconnect failed (or the engine stops): what is held will never be heard."""
        if not self._holding:
            return
        self._holding = False
        self._report_episode(discarded=self._size)
        self._chunks.clear()
        self._size = self._base = 0
        self._replayed.clear()

    def _report_episode(self, discarded: int) -> None:
        bps = self._bytes_per_s
        counts: tuple[tuple[HeldAudioKind, int], ...] = (
            ("buffered", self._entered), ("replayed", self._replay_pos),
            ("overflow", self._dropped), ("discarded", discarded),
        )  # fmt: skip
        for kind, nbytes in counts:
            if nbytes:
                self._report(kind, nbytes / bps)

    def _trim(self, limit: int) -> int:
        """Drop the oldest chunks until at most `limit` bytes remain -> bytes dropped."""
        dropped = 0
        chunks = self._chunks
        while self._size > limit and chunks:
            item = chunks.popleft()
            if not isinstance(item, _Commit):
                n = len(item)
                self._size -= n
                self._base += n
                dropped += n
        return dropped


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
    "COMMIT",
    "MAX_UPSTREAM_FRAME",
    "DialFailed",
    "ReconnectAudioBuffer",
    "ReconnectPolicy",
    "UpstreamOptions",
    "cancel_and_wait",
    "close_quietly",
    "dial_ws",
    "reconnect",
]
