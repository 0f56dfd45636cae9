"""`check_base64` accepts exactly what a strict decode accepts, and says what it decodes to.

The gateway passes a JSON client's base64 to the provider without decoding it, so this check
is all that stands between a client's bad text and the provider: it must refuse everything
`base64.b64decode(validate=True)` refuses (and surplus padding, which that lets through),
accept everything else it accepts, and count the bytes it decodes to exactly (the metering and the audio rate limit run on that count).
"""

from __future__ import annotations

import base64
import binascii
import random

import pytest

from voxgate import protocol as P
from voxgate.pcm_b64 import check_base64


def _strict(text: str) -> bytes | None:
    """A strict decode, refusing also the surplus padding Python lets through after a whole
    group ("AAAA====" decodes to 3 bytes): valid base64 is as long as the standard encoding
    of what it decodes to."""
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(base64.b64encode(decoded)) == len(text) else None


TRICKY = [
    "", "AAAA", "AA==", "AAA=", "A===", "====", "AA=A", "A=AA", "=AAA", "AAAA====", "AA==AAAA", "AAAA=", "AAAA==",
    "AAA", "AAAAA", "AA-_", "AA+/", "AA A", "AA\nA", "AAAA\n", "AAé=", "AA\x00A", "AA\"A",
    "AA\\A", "////", "+++=", "QUJD", "QUI=", "QQ==", "QR==", "AB==",
]  # fmt: skip


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_agree_with_a_strict_decode(text: str) -> None:
    decoded = _strict(text)
    checked = check_base64(text)
    if decoded is None:
        assert checked is None, text
    else:
        assert checked is not None, text
        assert checked.nbytes == len(decoded) == len(checked)
        assert checked.pcm == decoded and checked.text == text and checked.b64 == text.encode()


def test_random_texts_agree_with_a_strict_decode() -> None:
    rng = random.Random(16)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    accepted = refused = 0
    for _ in range(20000):
        good = base64.b64encode(rng.randbytes(rng.randrange(0, 40))).decode()
        text = list(good)
        for _ in range(rng.choice((0, 0, 1, 2))):  # damage some: replace, insert or delete
            pos = rng.randrange(len(text) + 1)
            ch = rng.choice([*alphabet[:3], "=", "-", "_", " ", "\n", "é", '"', "\\", "*"])
            op = rng.randrange(3)
            if op == 0 and pos < len(text):
                text[pos] = ch
            elif op == 1:
                text.insert(pos, ch)
            elif pos < len(text):
                del text[pos]
        candidate = "".join(text)
        decoded = _strict(candidate)
        checked = check_base64(candidate)
        assert (checked is None) == (decoded is None), candidate
        if checked is not None:
            assert checked.nbytes == len(decoded or b"") and checked.pcm == decoded
            accepted += 1
        else:
            refused += 1
    assert accepted > 1000 and refused > 1000  # both sides were exercised


def test_the_samples_are_decoded_once() -> None:
    checked = check_base64(base64.b64encode(b"\x01\x02" * 480).decode())
    assert checked is not None
    first = checked.pcm
    assert checked.pcm is first and first == b"\x01\x02" * 480


@pytest.mark.parametrize(
    ("value", "sentence"),
    [
        ("AA-A", "is not valid base64"),  # URL-safe alphabet
        ("AAA", "is not valid base64"),  # length not a multiple of four
        ("AA=A", "is not valid base64"),  # padding in the middle
        ("AAé=", "is not valid base64"),  # not ASCII
        ("AAAA", "PCM16 needs an even number of bytes (2 per sample), got 3"),
        ("AA==", "got 1"),
        (12, "must be a base64 string"),
        (None, "must be a base64 string"),
    ],
)
def test_audio_chunk_refusals_say_which_rule_was_broken(value: object, sentence: str) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.parse_client_text(P.encode({"type": "audio_chunk", "pcm16Base64": value}))
    assert sentence in info.value.message and info.value.code == P.ErrorCode.BAD_REQUEST
    assert info.value.counts_as_invalid and not info.value.fatal


def test_audio_chunk_keeps_the_text_and_counts_the_bytes() -> None:
    pcm = bytes(range(256)) * 4
    text = base64.b64encode(pcm).decode()
    parsed = P.parse_client_text(P.encode({"type": "audio_chunk", "pcm16Base64": text}))
    assert isinstance(parsed, P.AudioChunk)
    assert parsed.audio.text == text and parsed.audio.nbytes == len(pcm) and parsed.pcm16 == pcm
