"""Experiment (bench only): an `Outbox` that writes audio straight to the socket when it can.

Hypothesis under test: voxgate's longer round-trip tail comes from the extra task hop on the
client-bound path (engine reader -> emit loop -> Outbox sender task -> socket). When nothing is
queued, the sender task is not mid-send and the client is not congested, this variant performs
the ASGI send inline, in the emit loop, but only if it completes without suspending: uvicorn's
send awaits `writable.wait()` before writing anything, so a send that would block is closed
unsent and the frame is queued exactly as before (the bounded, drop-oldest behaviour for slow
clients is unchanged). The sender task itself is the current `Outbox.run`, inherited as is.

Enabled in the benchmark's gateway process with `VOXGATE_BENCH_FAST_OUTBOX=1`, which passes
`FastOutbox` as the sessions' outbox factory (`SessionTuning`); voxgate itself is untouched.
"""

from __future__ import annotations

from typing import Any

from voxgate.gateway.outbox import Outbox


class _BusyTrackingSocket:
    """The socket as `Outbox.run` sees it: marks the outbox busy while a send is in flight."""

    def __init__(self, ws: Any, owner: FastOutbox) -> None:
        self._ws = ws
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    async def send(self, message: Any) -> None:
        self._owner._busy = True
        try:
            await self._ws.send(message)
        finally:
            self._owner._busy = False


#: Frames sent inline / queued, over the process (printed by the gateway process at exit).
COUNTS = {"inline": 0, "queued": 0}


class FastOutbox(Outbox):
    def __init__(self, websocket: Any, max_audio_bytes: int) -> None:
        super().__init__(websocket, max_audio_bytes)
        self._direct_send = websocket.send
        self._ws = _BusyTrackingSocket(websocket, self)  # type: ignore[assignment]
        self._busy = False
        self.inline_sends = 0

    def put_audio(self, payload: str | bytes, nbytes: int, item_id: str) -> int:
        if not self._queue and not self._busy and not self._closed and not self.congested:
            key = "bytes" if isinstance(payload, bytes) else "text"
            coro = self._direct_send({"type": "websocket.send", key: payload})
            try:
                coro.send(None)
            except StopIteration:
                self.inline_sends += 1
                COUNTS["inline"] += 1
                return 0
            except BaseException:
                coro.close()
                raise
            coro.close()  # it would have waited for the transport: nothing was written
        COUNTS["queued"] += 1
        return super().put_audio(payload, nbytes, item_id)
