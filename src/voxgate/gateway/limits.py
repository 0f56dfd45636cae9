"""Limits that keep one user (or one dead provider) from hurting everyone else.

- `TokenBucket`: control messages per minute.
- `AudioBudget`: audio bytes (a multiple of real time) and frames per second.
- `KeyedTokenBuckets`: one bucket per user (or client address), e.g. for the token endpoint.
- `WindowCounter`: invalid frames within a sliding minute (flood detection).
- `SessionLimiter`: the global session cap and the per-user cap.
- `CircuitBreaker`: one per engine; stops hammering a provider that keeps failing to connect.
- `HeaderSizeLimit`: ASGI middleware refusing requests whose headers are absurdly large.

All of them are plain, synchronous and O(1) per call: they run on every frame.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from voxgate.gateway.asgi import send_json


class TokenBucket:
    """Classic token bucket: `capacity` tokens, refilled at `rate` tokens per second."""

    __slots__ = ("capacity", "rate", "_tokens", "_stamp", "_clock")

    def __init__(self, capacity: float, rate: float, clock=time.monotonic) -> None:
        self.capacity = float(capacity)
        self.rate = float(rate)
        self._tokens = float(capacity)
        self._clock = clock
        self._stamp = clock()

    def take(self, amount: float = 1.0) -> bool:
        now = self._clock()
        tokens = self._tokens + (now - self._stamp) * self.rate
        self._stamp = now
        if tokens > self.capacity:
            tokens = self.capacity
        if tokens >= amount:
            self._tokens = tokens - amount
            return True
        self._tokens = tokens
        return False

    def available(self) -> float:
        """Tokens available now (without taking any)."""
        return min(self.capacity, self._tokens + (self._clock() - self._stamp) * self.rate)

    @classmethod
    def per_minute(cls, count: int) -> TokenBucket:
        # The whole minute's allowance may be spent at once (a burst), then it refills steadily.
        return cls(capacity=count, rate=count / 60.0)


class AudioBudget:
    """Audio a client may send: bytes at a multiple of real time, and frames per second.

    Counting bytes alone lets a flood of empty or two-byte frames through (each still costs a
    provider request and a relay hop), so every frame also takes a frame token. Two policies:
    `take` (drop what is over budget: a live microphone never needs more) and `charge` (accept
    everything but say how long to pause reading: a recording sent in one go arrives intact,
    paced to the sustained rate once its burst is spent). `charge` may run into debt, so one
    event larger than the whole burst still passes, and the pause pays it back.
    """

    __slots__ = ("byte_rate", "byte_cap", "frame_rate", "frame_cap", "_bytes", "_frames", "_stamp", "_clock")

    def __init__(
        self,
        bytes_per_s: float,
        burst_bytes: float,
        frames_per_s: float,
        *,
        frame_burst_s: float = 2.0,
        clock=time.monotonic,
    ) -> None:
        self.byte_rate = float(bytes_per_s)
        self.byte_cap = float(burst_bytes)
        self.frame_rate = float(frames_per_s)
        self.frame_cap = float(max(1.0, frames_per_s * frame_burst_s))
        self._bytes = self.byte_cap
        self._frames = self.frame_cap
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._stamp
        self._stamp = now
        self._bytes = min(self.byte_cap, self._bytes + elapsed * self.byte_rate)
        self._frames = min(self.frame_cap, self._frames + elapsed * self.frame_rate)

    def take(self, nbytes: int) -> bool:
        """Drop policy: True when one frame of `nbytes` fits now (and is counted)."""
        self._refill()
        if self._frames >= 1.0 and self._bytes >= nbytes:
            self._frames -= 1.0
            self._bytes -= nbytes
            return True
        return False

    def charge(self, nbytes: int) -> float:
        """Pace policy: count one frame of `nbytes`; -> seconds to wait before the next."""
        self._refill()
        self._frames -= 1.0
        self._bytes -= nbytes
        wait = 0.0
        if self._bytes < 0:
            wait = -self._bytes / self.byte_rate
        if self._frames < 0:
            wait = max(wait, -self._frames / self.frame_rate)
        return wait


class KeyedTokenBuckets:
    """One `TokenBucket` per key (a user id, or a client address for anonymous callers).

    Memory stays bounded: past `max_keys` entries, buckets that have refilled completely are
    forgotten (a fresh bucket would be identical), and if every bucket is still draining the
    oldest entries go. Forgetting a draining bucket can only ever be generous to one caller.
    """

    def __init__(
        self, capacity: float, rate: float, *, max_keys: int = 10_000, clock=time.monotonic
    ) -> None:
        self.capacity = float(capacity)
        self.rate = float(rate)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    @classmethod
    def per_minute(cls, count: int, **kw: Any) -> KeyedTokenBuckets:
        return cls(capacity=count, rate=count / 60.0, **kw)

    def take(self, key: str, amount: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune()
            bucket = TokenBucket(self.capacity, self.rate, clock=self._clock)
            self._buckets[key] = bucket
        return bucket.take(amount)

    def retry_after_s(self, key: str, amount: float = 1.0) -> float:
        """Seconds until `amount` tokens are back for `key` (0 when available now)."""
        bucket = self._buckets.get(key)
        if bucket is None or self.rate <= 0:
            return 0.0
        return max(0.0, (amount - bucket.available()) / self.rate)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self) -> None:
        for key in [k for k, b in self._buckets.items() if b.available() >= self.capacity]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]  # dicts keep insertion order


class WindowCounter:
    """Counts events in a sliding window; `hit()` returns the count inside the window."""

    __slots__ = ("window_s", "_hits", "_clock")

    def __init__(self, window_s: float = 60.0, clock=time.monotonic) -> None:
        self.window_s = window_s
        self._hits: deque[float] = deque()
        self._clock = clock

    def hit(self) -> int:
        now = self._clock()
        self._hits.append(now)
        edge = now - self.window_s
        while self._hits and self._hits[0] < edge:
            self._hits.popleft()
        return len(self._hits)


class LimitExceeded(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionLimiter:
    """Global and per-user concurrent session caps.

    With auth off every connection is its own anonymous user, so only the global cap applies;
    callers pass `per_user=False` for anonymous identities.
    """

    def __init__(self, max_sessions: int, max_per_user: int, clock=time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.max_per_user = max_per_user
        self.total = 0
        self._per_user: dict[str, int] = {}
        #: Provider credentials minted for a user (a client secret, a signed URL): each may
        #: open a provider session voxgate never sees, so it holds one of the user's slots
        #: until it expires. user -> expiry times (monotonic).
        self._held: dict[str, list[float]] = {}
        self._clock = clock

    def acquire(self, user_id: str, *, per_user: bool = True) -> None:
        if self.total >= self.max_sessions:
            raise LimitExceeded(
                f"the server is at its limit of {self.max_sessions} concurrent sessions; try again later"
            )
        if per_user and self.count_for(user_id) >= self.max_per_user:
            raise LimitExceeded(self._per_user_sentence(user_id))
        self.total += 1
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1

    def hold(self, user_id: str, seconds: float) -> float:
        """Count a minted provider credential as one of `user_id`'s sessions for `seconds`.

        -> a handle for `unhold` (the mint failed after all). Raises `LimitExceeded`.
        """
        if self.count_for(user_id) >= self.max_per_user:
            raise LimitExceeded(self._per_user_sentence(user_id))
        if len(self._held) > 10_000:  # bound memory: forget users whose holds all expired
            for user in list(self._held):
                self._holds(user)
        until = self._clock() + seconds
        self._held.setdefault(user_id, []).append(until)
        return until

    def unhold(self, user_id: str, handle: float) -> None:
        held = self._held.get(user_id)
        if held and handle in held:
            held.remove(handle)

    def _per_user_sentence(self, user_id: str) -> str:
        held = self._holds(user_id)
        extra = f", {held} of them provider credentials minted recently" if held else ""
        return (
            f"you already have {self.max_per_user} open sessions (the per-user limit{extra}); "
            "close one first"
        )

    def _holds(self, user_id: str) -> int:
        held = self._held.get(user_id)
        if not held:
            return 0
        now = self._clock()
        live = [t for t in held if t > now]
        if live:
            self._held[user_id] = live
        else:
            del self._held[user_id]
        return len(live)

    def release(self, user_id: str) -> None:
        self.total = max(0, self.total - 1)
        left = self._per_user.get(user_id, 0) - 1
        if left > 0:
            self._per_user[user_id] = left
        else:
            self._per_user.pop(user_id, None)

    def count_for(self, user_id: str) -> int:
        """Open sessions plus unexpired provider credentials held for `user_id`."""
        return self._per_user.get(user_id, 0) + self._holds(user_id)


BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    """Opens after `failures` consecutive connect failures; half-opens after `cooldown_s`.

    Half-open lets one trial through: success closes the breaker, failure re-opens it for a
    fresh cooldown. While open, `allow()` is False and new sessions fail at once. A trial whose
    outcome is never recorded (its session was cancelled before the engine dialled) holds the
    breaker for one cooldown at most; then another trial may go.

    In a cluster every node keeps its own breaker per engine and tells the others when it opens
    or closes (`on_change(opened, retry_after_s)`); what they hear goes to `apply_remote`, which
    does not call `on_change` again, so news never echoes around the nodes.
    """

    failures: int = 3
    cooldown_s: float = 30.0
    clock: object = time.monotonic
    on_change: Callable[[bool, float], None] | None = None
    _consecutive: int = 0
    _opened_at: float | None = None
    _trial_in_flight: bool = False
    _trial_started: float = 0.0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at >= self.cooldown_s:  # type: ignore[operator]
            return "half_open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open":
            now = self.clock()  # type: ignore[operator]
            if not self._trial_in_flight or now - self._trial_started >= self.cooldown_s:
                self._trial_in_flight = True
                self._trial_started = now
                return True
        return False

    def record(self, ok: bool) -> None:
        self._trial_in_flight = False
        if ok:
            self._consecutive = 0
            was_open = self._opened_at is not None
            self._opened_at = None
            if was_open and self.on_change is not None:
                self.on_change(False, 0.0)
            return
        self._consecutive += 1
        if self._opened_at is not None or self._consecutive >= self.failures:
            self._opened_at = self.clock()  # type: ignore[operator]
            if self.on_change is not None:
                self.on_change(True, self.cooldown_s)

    def apply_remote(self, opened: bool, retry_after_s: float = 0.0) -> None:
        """Another node's breaker for this engine opened (for `retry_after_s` more) or closed."""
        if not opened:
            self._consecutive = 0
            self._opened_at = None
            return
        remaining = min(self.cooldown_s, max(0.0, retry_after_s))
        self._consecutive = max(self._consecutive, self.failures)
        self._opened_at = self.clock() - (self.cooldown_s - remaining)  # type: ignore[operator]

    def retry_after_s(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self._opened_at))  # type: ignore[operator]


#: Request heads above this many bytes are refused with 431, whichever layer notices first.
HEADER_LIMIT_BYTES = 64 * 1024
HEADERS_TOO_LARGE = (
    b'{"detail":"request headers total more than ' + str(HEADER_LIMIT_BYTES).encode()
    + b' bytes","code":"payload_too_large"}'
)  # fmt: skip


class HeaderSizeLimit:
    """Pure ASGI middleware: refuse HTTP requests and WebSocket handshakes whose headers total
    more than `max_bytes` with 431 (Request Header Fields Too Large).

    Why here and not only in the HTTP parser: uvicorn's `h11_max_incomplete_event_size` binds
    only its h11 parser; with httptools (uvicorn's default when installed) headers of any size
    reach the app. This gives one clear answer whichever parser runs. It cannot bound the
    parser's own memory, which is why the server should run h11 (see `gateway/server.py`).
    """

    def __init__(self, app: Any, max_bytes: int = HEADER_LIMIT_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope.get("type")
        if kind in ("http", "websocket"):
            size = sum(len(k) + len(v) for k, v in scope.get("headers") or ())
            if size > self.max_bytes:
                if kind == "websocket":
                    await _deny_handshake(scope, send, self.max_bytes)
                    return
                body = (
                    b'{"detail":"request headers total more than '
                    + str(self.max_bytes).encode()
                    + b' bytes","code":"payload_too_large"}'
                )
                await send_json(send, 431, body, close=True)
                return
        await self.app(scope, receive, send)


async def _deny_handshake(scope: dict[str, Any], send: Any, max_bytes: int) -> None:
    """Refuse an upgrade with the same 431 and JSON body an HTTP request gets."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        # A server without the denial-response extension can only say 403.
        await send({"type": "websocket.close", "code": 1009})
        return
    body = (
        b'{"detail":"request headers total more than ' + str(max_bytes).encode()
        + b' bytes","code":"payload_too_large"}'
    )  # fmt: skip
    await send({
        "type": "websocket.http.response.start", "status": 431,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })  # fmt: skip
    await send({"type": "websocket.http.response.body", "body": body})
