"""Origin checks against cross-site WebSocket hijacking, and a Host check against DNS rebinding.

Browsers always send `Origin` on a WebSocket handshake and cross-site pages cannot forge it,
so an allowlist stops another site from opening `/ws` with a visitor's cookies or a page-held
token. Non-browser clients (SDKs, CLI) send no Origin and are judged by auth alone.

DNS rebinding: a hostile page at `http://evil.example:8000` can make its own name resolve to
127.0.0.1; the browser then treats the gateway as that page's own origin (`Origin` matches
`Host`), and with `VOXGATE_AUTH=none` nothing else stands in the way: it could open sessions on
the operator's provider account or read stored conversations. So while auth is off (and the
operator did not pass `--insecure`), "the server's own origin" only counts when the `Host` is one
the server can vouch for (a loopback name, the bind address, or a configured origin), and
`BrowserHostGuard` refuses browser requests to HTTP routes under any other `Host`.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from voxgate.config import Settings
from voxgate.gateway.asgi import send_json

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
    if host and parts.netloc == host and host_trusted(host, settings):
        return True
    # Loopback pages (development) unless an explicit allowlist was configured.
    return not allowed and _is_loopback(parts.hostname)


def host_trusted(host_header: str, settings: Settings) -> bool:
    """May a browser page served under this `Host` act as the server's own origin?

    Always, when auth is on or the operator passed `--insecure` (a proxy in front vouches for
    callers): then a rebound page gains nothing. Otherwise only for a loopback name, the bind
    address, or a host named in `VOXGATE_ALLOWED_ORIGINS`.
    """
    if settings.auth != "none" or settings.insecure:
        return True
    hostname = urlsplit("//" + host_header.strip()).hostname
    if not hostname:
        return False
    if _is_loopback(hostname) or hostname == settings.host.lower():
        return True
    return any(urlsplit(o.strip()).hostname == hostname for o in settings.allowed_origins)


def _is_loopback(hostname: str) -> bool:
    if hostname in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


class BrowserHostGuard:
    """Pure ASGI middleware: with auth off, refuse browser HTTP requests under an untrusted Host.

    Only requests that carry a browser's marks (`Origin` or `Sec-Fetch-Site`, which every current
    browser sends) are judged, so scripts, SDKs and in-process test clients are unaffected; a
    rebound page cannot drop those headers. WebSocket handshakes are judged by `origin_allowed`,
    which answers with a protocol error the page can read.
    """

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and self.settings.auth == "none" and not self.settings.insecure:
            headers = dict(scope.get("headers") or ())
            browser = b"origin" in headers or b"sec-fetch-site" in headers
            host = headers.get(b"host", b"").decode("latin-1")
            if browser and not host_trusted(host, self.settings):
                body = (
                    b'{"detail":"this server answers browsers only under a loopback address '
                    b'while VOXGATE_AUTH=none (DNS rebinding guard)","code":"forbidden_origin"}'
                )
                await send_json(send, 403, body)
                return
        await self.app(scope, receive, send)


class CrossOriginAccess:
    """Pure ASGI middleware: CORS for the pages `VOXGATE_ALLOWED_ORIGINS` allows.

    One allowlist for everything a page on another site uses: the WebSocket (judged by
    `origin_allowed` at the door), and here `voxgate.js`, its two worklets and the JSON APIs
    (the module and worklets are fetched in CORS mode, so without these headers the import
    fails). No credentials mode: voxgate reads bearer tokens, never cookies, so a page can send
    `Authorization` and nothing ambient rides along. A disallowed origin gets no CORS headers
    (its page cannot read the answer) and a 403 to its preflight.
    """

    ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
    ALLOW_HEADERS = "Authorization, Content-Type"

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        raw_origin = headers.get(b"origin")
        if raw_origin is None:
            await self.app(scope, receive, send)
            return
        allowed = origin_allowed(HTTPConnection(scope), self.settings)
        origin = raw_origin.decode("latin-1")
        if scope.get("method") == "OPTIONS" and b"access-control-request-method" in headers:
            await self._preflight(send, origin if allowed else None)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return
        added = [
            (b"access-control-allow-origin", raw_origin),
            (b"access-control-expose-headers", b"Retry-After"),
            (b"vary", b"Origin"),
        ]

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in added}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*kept, *added]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, send: Any, origin: str | None) -> None:
        if origin is None:
            await send({"type": "http.response.start", "status": 403, "headers": [(b"vary", b"Origin")]})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", self.ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", self.ALLOW_HEADERS.encode()),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
