"""Logging: plain text or one JSON object per line, with secrets scrubbed from every record.

The scrubber is a last line of defence: code should never log a secret, but a URL with
`?token=` or a stray header value must not leak even if it does.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import orjson

from voxgate.secrets import scrub

#: The session a log line belongs to. Set once per session task; tasks the session (and its
#: engine) create inherit it, so engine logs carry the id too without passing it around.
session_id_var: ContextVar[str | None] = ContextVar("voxgate_session_id", default=None)


#: Control characters written out as escapes: a newline in a client's value (a close reason
#: quoting an unknown message type, a conversation id) would otherwise forge a log line.
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85)}
_CONTROL_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029)})
_CONTROL_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def escape_controls(text: str) -> str:
    """`text` on one line: control characters as backslash escapes."""
    if text.isprintable():
        return text
    return text.translate(_CONTROL_ESCAPES)


class ScrubFilter(logging.Filter):
    """Secrets out, control characters escaped, in every record's message: values from
    clients reach log lines as arguments, so the formatted message is where they all meet.
    (Tracebacks keep their lines: they are the gateway's own text.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "session_id", None) is None:
            record.session_id = session_id_var.get()
        message = record.getMessage()
        cleaned = escape_controls(scrub(message))
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
        text = super().format(record)
        session_id = getattr(record, "session_id", None)
        if session_id:
            text = f"{text} [session {session_id[:12]}]"
        return scrub(text)


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
    # At DEBUG the websockets library logs handshake headers, the upstream's
    # `Authorization: Bearer <provider key>` among them. Our handler scrubs them, but a handler
    # added later (an error tracker) would not, so those records are never created at all.
    for name in ("websockets", "websockets.client", "websockets.server"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
