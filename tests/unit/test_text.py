"""The small text helpers every engine and both endpoints share: deltas, heard text, scrubbing."""

from __future__ import annotations

import pytest

from voxgate.secrets import MASK, register_secret, scrub
from voxgate.turns import cut_at_word, heard_prefix, text_delta


def test_text_delta_of_grown_and_rewritten_text() -> None:
    assert text_delta("hello", "hello there") == " there"
    assert text_delta("", "hi") == "hi"
    assert text_delta("hello", "hello") == ""
    # A rewrite has no honest delta: the whole text by default, or what the caller says.
    assert text_delta("hello wrld", "hello world") == "hello world"
    assert text_delta("hello wrld", "hello world", fallback="") == ""


def test_heard_prefix_cuts_at_word_boundaries() -> None:
    text = "one two three four"
    assert heard_prefix(text, 0, 1000) == ""
    assert heard_prefix(text, 1000, 1000) == text
    assert heard_prefix(text, 2000, 1000) == text
    assert heard_prefix(text, 500, 1000) == "one two"
    assert heard_prefix(text, 500, 0) == ""
    assert cut_at_word("alpha, beta", 0.6) == "alpha"


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("wss://host/ws?token=eyJhbGciOi.payload.sig&x=1", "eyJhbGciOi.payload.sig"),
        ("subprotocol voxgate.bearer.vxs_0123456789", "vxs_0123456789"),
        ("offered openai-insecure-api-key.ek_abcdef123456", "ek_abcdef123456"),
        ("Incorrect API key provided: sk-proj-0123456789abcdef", "0123456789abcdef"),
        ('{"value": "ek_68af0123456789abcd"}', "68af0123456789abcd"),
        ('xi-api-key: "xi_0123456789"', "xi_0123456789"),
    ],
)
def test_scrub_masks_every_secret_shape(text: str, hidden: str) -> None:
    cleaned = scrub(text)
    assert hidden not in cleaned
    assert MASK in cleaned


def test_scrub_masks_exact_values_given_or_registered() -> None:
    assert scrub("the key is plain-value-123", extra=["plain-value-123"]) == f"the key is {MASK}"
    register_secret("registered-value-456")
    assert scrub("oops registered-value-456 leaked") == f"oops {MASK} leaked"
    assert scrub("nothing secret here") == "nothing secret here"
