"""Origin checks against cross-site WebSocket hijacking.

Browsers always send `Origin` on a WebSocket handshake and cross-site pages cannot forge it,
so an allowlist stops another site from opening `/ws` with a visitor's cookies or a page-held
token. Non-browser clients (SDKs, CLI) send no Origin and are judged by auth alone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from voxgate.config import Settings

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def origin_allowed(conn: HTTPConnection, settings: Settings) -> bool:
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/")
    allowed = settings.allowed_origins
    if "*" in allowed:
        return True
    if origin in (o.rstrip("/") for o in allowed):
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    # The server's own origin: the page it served is talking back to it.
    host = conn.headers.get("host", "")
    if host and parts.netloc == host:
        return True
    # Loopback pages (development) unless an explicit allowlist was configured.
    return not allowed and parts.hostname in _LOOPBACK_HOSTS
