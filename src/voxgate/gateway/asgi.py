"""Answers sent straight through ASGI, for middleware that refuses a request before any route."""

from __future__ import annotations

from typing import Any


async def send_json(send: Any, status: int, body: bytes, *, close: bool = False) -> None:
    """Send a complete JSON response; `close` asks the client to drop the connection after it."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
