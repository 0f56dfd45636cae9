"""Timestamps carried inside the audio itself, so any relay that keeps the bytes keeps them.

The first 16 bytes of each 20 ms PCM16 frame hold (session, sequence, send time). Time is
`time.perf_counter_ns()`, which is CLOCK_MONOTONIC on Linux and therefore comparable across
processes on the same machine. Nothing on the measured paths resamples (24 kHz in and out), so
the bytes come back unchanged; a base64 round trip keeps them too.
"""

from __future__ import annotations

import base64
import struct

RATE = 24000
FRAME_MS = 20
FRAME_BYTES = RATE * 2 * FRAME_MS // 1000  # 960: PCM16 mono
FRAMES_PER_S = 1000 // FRAME_MS
_STAMP = struct.Struct("<IIq")
STAMP_BYTES = _STAMP.size  # 16
#: 24 base64 characters decode to 18 bytes: enough for the stamp without decoding the frame.
STAMP_B64_CHARS = 24


def frame_template() -> bytearray:
    """A 20 ms frame of quiet, non-constant PCM (a constant frame would be unrealistically
    compressible should any link negotiate permessage-deflate)."""
    samples = bytearray()
    for i in range(FRAME_BYTES // 2):
        samples += struct.pack("<h", ((i * 7919) % 601) - 300)
    return samples


def stamp(frame: bytearray, session: int, seq: int, t_ns: int) -> None:
    _STAMP.pack_into(frame, 0, session, seq, t_ns)


def read_stamp(pcm: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(session, seq, t_ns) from the first bytes of a frame."""
    return _STAMP.unpack_from(pcm, 0)


def read_stamp_b64(text: str, start: int) -> tuple[int, int, int]:
    """The stamp from base64 audio that begins at `text[start]`."""
    return _STAMP.unpack_from(base64.b64decode(text[start : start + STAMP_B64_CHARS]), 0)
