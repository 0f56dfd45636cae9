"""The WebSocket protocol `voxgate serve` runs pauses reading only when the app falls behind.

uvicorn's own sans-I/O protocol pauses the socket after every message and resumes when the app
has taken it (two `epoll_ctl` per audio frame); `batching_ws_protocol` keeps reading while the
app keeps up, and still holds a client that floods to a bounded queue: reading pauses past
`PAUSE_BYTES` or `PAUSE_MESSAGES` and resumes once the app has emptied the queue.
"""

from __future__ import annotations

from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from voxgate.gateway.server import batching_ws_protocol


class _Transport:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = self.resumes = 0

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False
        self.resumes += 1


async def _app(scope: Any, receive: Any, send: Any) -> None: ...


def _protocol() -> tuple[Any, _Transport]:
    cls = batching_ws_protocol()
    assert not isinstance(cls, str), "uvicorn's sans-I/O WebSocket protocol is installed"
    config = Config(app=_app)
    config.load()
    proto = cls(config, ServerState(), {})
    transport = _Transport()
    proto.transport = transport
    return proto, transport


def _arrive(proto: Any, payload: bytes) -> None:
    """One whole binary message parsed off the socket."""
    proto.curr_msg_data_type = "bytes"
    proto.frames = [payload]
    proto.send_receive_event_to_app()


async def test_an_app_that_keeps_up_never_pauses_reading() -> None:
    proto, transport = _protocol()
    for i in range(500):
        _arrive(proto, bytes([i % 256]) * 960)
        message = await proto.receive()
        assert message == {"type": "websocket.receive", "bytes": bytes([i % 256]) * 960}
    assert transport.pauses == 0 and not transport.paused


async def test_a_flood_pauses_at_the_byte_bound_and_resumes_once_drained() -> None:
    proto, transport = _protocol()
    frame = b"\0" * 4000
    sent = 0
    while not transport.paused:
        _arrive(proto, frame)
        sent += 1
        assert sent <= proto.PAUSE_MESSAGES, "reading never paused"
    # Paused as soon as more than 64 KiB waited for the app.
    assert sent * len(frame) > proto.PAUSE_BYTES >= (sent - 1) * len(frame)
    for _ in range(sent - 1):
        await proto.receive()
        assert transport.paused  # still behind: stays paused
    await proto.receive()
    assert not transport.paused and transport.resumes == 1  # drained: reading again


async def test_many_small_messages_pause_at_the_message_bound() -> None:
    proto, transport = _protocol()
    for _ in range(proto.PAUSE_MESSAGES - 1):
        _arrive(proto, b"\0\0")
    assert not transport.paused
    _arrive(proto, b"\0\0")
    assert transport.paused and proto.queue.qsize() == proto.PAUSE_MESSAGES
