"""Text arithmetic on transcripts, shared by the gateway, every engine and the simulators.

Providers report transcripts in two shapes: growing text (everything so far) and deltas (what
is new). Clients get both, so the same small computations recur everywhere a transcript is
forwarded; they live here once so every path agrees on the edge cases.
"""

from __future__ import annotations


def text_delta(previous: str, text: str, *, fallback: str | None = None) -> str:
    """What `text` adds to `previous`, when `text` is `previous` grown at its end.

    A transcript that was rewritten rather than extended (a correction, a final transcript that
    differs from its partials) has no honest delta: the caller says what to report then with
    `fallback` (the whole `text` when None, which suits a replacement, or "" when the client
    already holds the text and a rewrite must not be appended to it).
    """
    if text.startswith(previous):
        return text[len(previous) :]
    return text if fallback is None else fallback


def cut_at_word(text: str, fraction: float) -> str:
    """The first `fraction` of `text` (by characters), cut back to a word boundary."""
    if fraction >= 1.0:
        return text
    if fraction <= 0.0 or not text:
        return ""
    n = int(len(text) * fraction)
    cut = text[:n]
    if n < len(text) and not text[n].isspace():
        cut = cut.rsplit(" ", 1)[0] if " " in cut else ""
    return cut.strip().rstrip(",;:")


def heard_prefix(text: str, played_ms: float, total_ms: float) -> str:
    """What a listener heard of `text` after `played_ms` of its `total_ms` of speech.

    Speech runs at a near-even rate of characters within a reply, so cutting the text in
    proportion to the audio played is a fair estimate when the provider cannot say exactly
    (OpenAI deletes a truncated item's transcript; ElevenLabs corrects only barge-ins).
    """
    if total_ms <= 0:
        return ""
    return cut_at_word(text, played_ms / total_ms)


__all__ = ["cut_at_word", "heard_prefix", "text_delta"]
