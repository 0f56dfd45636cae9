"""PCM16 carried as its base64 text, decoded only when someone needs the samples.

A JSON client's `audio_chunk.pcm16Base64` at the engine's rate is, character for character,
the `audio` an OpenAI `input_audio_buffer.append` wants; OpenAI's `response.output_audio.delta`
is the `chunkBase64` a JSON client wants. Decoding and re-encoding it costs more than
everything else the gateway does with such a frame, so the text travels through untouched
(`Base64PCM`), checked by `check_base64` for what a decode would have refused: the length, the
alphabet, the padding and whole samples. Whoever needs the samples (resampling, the audio log,
the turn arbiter's voice check, a binary client) asks `pcm`, which decodes once and keeps it.
"""

from __future__ import annotations

import binascii

#: The standard base64 alphabet, without the padding character.
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_PAD = (b"", b"=", b"==")


class Base64PCM:
    """PCM16 as base64: `b64` (ASCII bytes) and `text` (the same as `str`), `len()` the
    number of PCM bytes it decodes to, `pcm` the samples (decoded on first use, then kept)."""

    __slots__ = ("_pcm", "b64", "nbytes", "text")

    def __init__(self, text: str, b64: bytes, nbytes: int) -> None:
        self.text = text
        self.b64 = b64
        self.nbytes = nbytes
        self._pcm: bytes | None = None

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        return f"Base64PCM({self.nbytes} bytes)"

    @property
    def pcm(self) -> bytes:
        pcm = self._pcm
        if pcm is None:
            pcm = self._pcm = binascii.a2b_base64(self.b64)
        return pcm


def check_base64(text: str) -> Base64PCM | None:
    """`text` as `Base64PCM` if a strict decode would accept it (None if not): ASCII, a length
    that is a multiple of four, only the standard alphabet, and at most two `=` at the end.
    (Stricter than `base64.b64decode(validate=True)` in one way: it refuses surplus padding
    after a whole group, "AAAA====", which no encoder produces.)

    It does not decode: it costs an ASCII copy and one `bytes.translate` over the text, a
    quarter of what `base64.b64decode(validate=True)` takes. Whole samples (an even byte count)
    are the caller's to check, on `nbytes`, so it can say which rule was broken.
    """
    n = len(text)
    if n & 3 or not text.isascii():
        return None
    b64 = text.encode("ascii")
    pad = 0
    if n and b64[-1] == 61:  # "="
        pad = 2 if b64[-2] == 61 else 1
    # What is left once the alphabet is deleted must be exactly the padding.
    if b64.translate(None, _ALPHABET) != _PAD[pad]:
        return None
    return Base64PCM(text, b64, (n >> 2) * 3 - pad)


__all__ = ["Base64PCM", "check_base64"]
