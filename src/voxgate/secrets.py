"""One secret scrubber for everything that leaves the process: logs, HTTP errors, close reasons.

Code should never put a secret in a sentence, but a provider error body that quotes the key, a
URL with `?token=` or a stray `Authorization` header must not leak even if it does. Every path
that shows text it did not write itself passes it through `scrub`, with the same mask (`***`),
so a leak test needs to look for one shape only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"([?&](?:token|key|api_key|conversation_signature)=)[^&\s\"']+", re.I), r"\1***"),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1***"),
    (re.compile(r"(voxgate\.bearer\.)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"(openai-insecure-api-key\.)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    # Provider keys and OpenAI ephemeral secrets keep a short prefix so a log still says which.
    (re.compile(r"\b(sk-[A-Za-z0-9_-]{3})[A-Za-z0-9_*-]+"), r"\1***"),
    (re.compile(r"\b(ek_[A-Za-z0-9_-]{3})[A-Za-z0-9_-]{3,}"), r"\1***"),
    (re.compile(r"(xi-api-key['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.I), r"\1***"),
]

_registered: list[str] = []


def register_secret(value: str | None) -> None:
    """Scrub this exact value from everything, from now on (provider keys, the JWT secret)."""
    if value and len(value) >= 6 and value not in _registered:
        _registered.append(value)


def scrub(text: str, extra: Iterable[str | None] = ()) -> str:
    """`text` with every known secret shape, every registered secret and `extra` masked."""
    for value in extra:
        if value and value in text:
            text = text.replace(value, MASK)
    for secret in _registered:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


__all__ = ["MASK", "register_secret", "scrub"]
