"""PCM16 helpers: conversion, streaming resampling (soxr), mono mixing, chunking, levels, WAV I/O.

Everything works on raw PCM16 little-endian bytes, the format that travels on every link, so
the common path (client and engine at the same rate) never touches numpy at all.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soxr

BYTES_PER_SAMPLE = 2


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


def duration_ms(pcm: bytes | int, rate: int) -> float:
    """Milliseconds of mono PCM16 audio, given bytes or a byte count."""
    n = pcm if isinstance(pcm, int) else len(pcm)
    return n / BYTES_PER_SAMPLE * 1000.0 / rate


def bytes_for_ms(ms: float, rate: int) -> int:
    """Byte count (even) of `ms` milliseconds of mono PCM16 at `rate`."""
    return int(rate * ms / 1000.0) * BYTES_PER_SAMPLE


def rms_dbfs(pcm: bytes) -> float:
    """Level in dBFS (-inf for silence): what VAD thresholds and tests compare against."""
    if not pcm:
        return float("-inf")
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x)))
    if rms <= 0:
        return float("-inf")
    return 20.0 * float(np.log10(rms / 32768.0))


def to_mono(pcm: bytes, channels: int) -> bytes:
    if channels == 1:
        return pcm
    x = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels).astype(np.int32)
    return x.mean(axis=1).astype("<i2").tobytes()


def chunks(pcm: bytes, rate: int, ms: int = 20) -> Iterator[bytes]:
    """Split audio into `ms` frames (the last one may be shorter)."""
    step = bytes_for_ms(ms, rate)
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step]


class StreamResampler:
    """Streaming PCM16 resampler (soxr), keeping filter state across chunks so that chunked
    audio resamples exactly like one long buffer: no clicks at chunk edges."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process(self, pcm: bytes, last: bool = False) -> bytes:
        x = np.frombuffer(pcm, dtype="<i2")
        y = self._stream.resample_chunk(x, last=last)
        return y.astype("<i2", copy=False).tobytes()

    def flush(self) -> bytes:
        return self.process(b"", last=True)

    def reset(self) -> None:
        """Drop buffered state (after an interrupt: stale samples must not leak into new audio)."""
        self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="int16")


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """One-shot resample of a whole buffer."""
    if in_rate == out_rate:
        return pcm
    x = np.frombuffer(pcm, dtype="<i2")
    return soxr.resample(x, in_rate, out_rate).astype("<i2").tobytes()


# --- WAV --------------------------------------------------------------------------------------


def read_wav(source: str | Path | bytes) -> tuple[bytes, int]:
    """Read a PCM16 WAV (any channel count) -> (mono PCM16, rate).

    Tolerates the bogus RIFF/data sizes that streaming writers such as `espeak-ng --stdout`
    put in the header (0xFFFFFFFF or 0): the data chunk is taken to run to the end of the file.
    """
    raw = Path(source).read_bytes() if not isinstance(source, bytes) else source
    return parse_wav_bytes(raw)


def parse_wav_bytes(raw: bytes) -> tuple[bytes, int]:
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    rate = channels = bits = None
    while pos + 8 <= len(raw):
        cid = raw[pos : pos + 4]
        size = int.from_bytes(raw[pos + 4 : pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            fmt = int.from_bytes(raw[body : body + 2], "little")
            channels = int.from_bytes(raw[body + 2 : body + 4], "little")
            rate = int.from_bytes(raw[body + 4 : body + 8], "little")
            bits = int.from_bytes(raw[body + 14 : body + 16], "little")
            if fmt not in (1, 0xFFFE) or bits != 16:
                raise ValueError(f"only 16-bit PCM WAV is supported (format {fmt}, {bits} bits)")
        elif cid == b"data":
            if rate is None or channels is None:
                raise ValueError("WAV data chunk before fmt chunk")
            end = len(raw) if size in (0, 0xFFFFFFFF) or body + size > len(raw) else body + size
            data = raw[body:end]
            data = data[: len(data) - len(data) % (2 * channels)]
            return to_mono(data, channels), rate
        pos = body + size + (size & 1)
    raise ValueError("WAV has no data chunk")


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    Path(path).write_bytes(wav_bytes(pcm, rate))


# --- G.711 mu-law (telephony formats such as ElevenLabs `ulaw_8000`) ---------------------------

_ULAW_BIAS = 0x84


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype("<i2")


_ULAW_TO_PCM = _ulaw_decode_table()


def ulaw_to_pcm16(data: bytes) -> bytes:
    """G.711 mu-law bytes -> PCM16 LE (one table lookup per sample)."""
    return _ULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)].tobytes()


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """PCM16 LE -> G.711 mu-law bytes (the CCITT 14-bit segment encoder, vectorised; bit-exact
    with the classic `audioop.lin2ulaw`)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), 8159) + 0x21
    segment = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 5, 0, 7)
    mantissa = (magnitude >> (segment + 1)) & 0x0F
    code = np.where(magnitude >= 0x2000, 0x7F, (segment << 4) | mantissa)  # clipped: top code
    return (code ^ mask).astype(np.uint8).tobytes()


def silence_pcm(ms: float, rate: int) -> bytes:
    """`ms` of digital silence as PCM16."""
    return b"\x00" * bytes_for_ms(ms, rate)
