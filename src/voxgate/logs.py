"""Logging: plain text or one JSON object per line, with secrets scrubbed from every record.

The scrubber is a last line of defence: code should never log a secret, but a URL with
`?token=` or a stray header value must not leak even if it does.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson

_SECRET_PATTERNS = [
    (re.compile(r"([?&](?:token|key|api_key|conversation_signature)=)[^&\s\"']+", re.I), r"\1***"),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1***"),
    (re.compile(r"(voxgate\.bearer\.)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"(openai-insecure-api-key\.)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"\b(sk-[A-Za-z0-9_-]{6})[A-Za-z0-9_-]+"), r"\1***"),
    (re.compile(r"(xi-api-key['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.I), r"\1***"),
]

_extra_secrets: list[str] = []


def register_secret(value: str | None) -> None:
    """Scrub this exact value from every log line (provider keys, the JWT secret)."""
    if value and len(value) >= 6 and value not in _extra_secrets:
        _extra_secrets.append(value)


def scrub(text: str) -> str:
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    for secret in _extra_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        session_id = getattr(record, "session_id", None)
        if session_id:
            entry["sessionId"] = session_id
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
