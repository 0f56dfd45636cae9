"""Security: who gets in, with which token, from which origin; the token endpoint and
its direct provider credentials (against the shipped simulators); the operator CLI; and HTTP
routes under odd paths and oversized headers.

Every refusal must be a clear protocol error and close code, never a crash.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voxgate.cli import app as cli_app
from voxgate.cli import check_serve_settings
from voxgate.client import VoxgateClient
from voxgate.config import Settings
from voxgate.gateway.auth import Authenticator, AuthError
from voxgate.testing.elevenlabs_sim import ElevenLabsSim
from voxgate.testing.openai_sim import OpenAISimulator

SECRET = "security-test-jwt-secret-0123456789abcdef"
OPENAI_KEY = "sk-test-security-openai-0123456789"
XI_KEY = "xi-test-security-elevenlabs-0123456789"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(
    sub: Any = "alice",
    *,
    ttl: int = 600,
    secret: str = SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    if sub is None:
        del payload["sub"]
    return jwt.encode(payload, secret, algorithm=algorithm)


def unsigned_jwt(alg: str, payload: dict[str, Any]) -> str:
    """A token whose header names `alg` and whose signature is empty or junk (crafted by hand:
    an attacker does not need a library's permission)."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    signature = "" if alg == "none" else b64url(b"not-a-real-signature")
    return f"{header}.{body}.{signature}"


async def refusal(url: str, **connect_kw: Any) -> tuple[dict[str, Any], int | None]:
    """A handshake the gateway refuses: -> (its one fatal error, the close code)."""
    async with connect(url, open_timeout=10, **connect_kw) as ws:
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return error, ws.close_code


async def pong(client: VoxgateClient, ping_id: str = "p") -> bool:
    await client.ping(ping_id)
    return (await client.wait_for("pong", timeout=10))["id"] == ping_id


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- JWTs on /ws ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The HMAC key is")  # the HS512 case reuses the server secret
async def test_bad_jwts_are_refused_with_4401(make_settings, gateway_factory) -> None:
    now = int(time.time())
    cases = {
        "missing": (None, "authentication required"),
        "expired": (make_jwt(ttl=-60), "expired"),
        "forged": (make_jwt(secret="not-the-server-secret-0123456789abcdef"), "invalid"),
        "alg none": (unsigned_jwt("none", {"sub": "mallory", "exp": now + 600}), "algorithm"),
        "HS512": (make_jwt(algorithm="HS512"), "algorithm"),
        "RS256": (unsigned_jwt("RS256", {"sub": "mallory", "exp": now + 600}), "algorithm"),
        "no exp": (jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "'exp'"),
        "no sub": (make_jwt(sub=None), "'sub'"),
        "sub with newline": (make_jwt(sub="alice\nINFO forged log line"), "'sub'"),
        "garbage": ("not.a.jwt", "invalid"),
        "unknown session token": ("vxs_" + "A" * 43, "unknown or was already used"),
    }
    async with gateway_factory(make_settings(auth="jwt", jwt_secret=SECRET)) as gw:
        for name, (token, sentence) in cases.items():
            headers = bearer(token) if token else {}
            error, code = await refusal(gw.ws_url, additional_headers=headers)
            assert code == 4401, name
            assert error["type"] == "error" and error["code"] == "unauthorized", name
            assert error["fatal"] is True, name
            assert sentence in error["message"], (name, error["message"])
            if token:
                assert token not in error["message"]
        assert not gw.state.sessions and gw.state.limiter.total == 0
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            assert (await http.get("/health")).status_code == 200


async def test_valid_jwt_works_by_header_query_and_subprotocol(
    make_settings, gateway_factory
) -> None:
    token = make_jwt("alice")
    async with gateway_factory(make_settings(auth="jwt", jwt_secret=SECRET)) as gw:
        for via in ("header", "query", "subprotocol"):
            async with VoxgateClient(gw.ws_url, token, token_via=via) as client:
                # The client offers voxgate.v1 too: the server selects it, never the token.
                assert client.subprotocol == "voxgate.v1", via
                assert await pong(client, via)
                (session,) = gw.state.sessions.values()
                assert session.user_id == "alice"
        # A browser that offers only the bearer subprotocol needs it selected.
        async with connect(gw.ws_url, subprotocols=[f"voxgate.bearer.{token}"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == f"voxgate.bearer.{token}"
            await ws.send('{"type":"ping","id":1}')
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"
        # The header wins over a bad query token (documented precedence).
        async with connect(gw.ws_url + "?token=garbage", additional_headers=bearer(token)) as ws:
            await ws.send('{"type":"ping","id":2}')
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"


async def test_http_routes_need_a_jwt_not_a_session_token(make_settings, gateway_factory) -> None:
    settings = make_settings(auth="jwt", jwt_secret=SECRET, admin_users=["root"])
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        assert (await http.get("/api/realtime/sessions")).status_code == 401
        forged = await http.get(
            "/api/realtime/sessions", headers=bearer(make_jwt("root", secret="x" * 40))
        )
        assert forged.status_code == 401 and "invalid" in forged.json()["detail"]
        # Admin by configuration, by a boolean claim; never by a truthy string.
        assert (
            await http.get("/api/realtime/sessions", headers=bearer(make_jwt("root")))
        ).status_code == 200
        assert (
            await http.get("/api/realtime/sessions", headers=bearer(make_jwt("ops", admin=True)))
        ).status_code == 200
        assert (
            await http.get("/api/realtime/sessions", headers=bearer(make_jwt("eve", admin="false")))
        ).status_code == 403
        # A single-use session token opens /ws only: it cannot mint a successor or reach admin.
        minted = await http.post("/api/realtime/session", headers=bearer(make_jwt("root")))
        session_token = minted.json()["token"]
        again = await http.post("/api/realtime/session", headers=bearer(session_token))
        assert again.status_code == 401 and "only opens /ws" in again.json()["detail"]
        assert (
            await http.get("/api/realtime/sessions", headers=bearer(session_token))
        ).status_code == 401
        # ...and it was not used up by those refusals.
        async with VoxgateClient(gw.ws_url, session_token) as client:
            assert await pong(client)


# --- the token endpoint ---------------------------------------------------------------------


async def test_session_token_is_single_use_and_short_lived(make_settings, gateway_factory) -> None:
    settings = make_settings(auth="jwt", jwt_secret=SECRET, admin_users=["alice"])
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        assert (await http.post("/api/realtime/session")).status_code == 401
        before = time.time()
        resp = await http.post("/api/realtime/session", headers=bearer(make_jwt("alice")))
        assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
        body = resp.json()
        assert set(body) == {"token", "sessionId", "expiresAt"}
        assert body["token"].startswith("vxs_") and isinstance(body["expiresAt"], int)
        assert before + 55 <= body["expiresAt"] <= time.time() + 61  # epoch seconds, 60 s
        # First use: the session carries the promised id and the caller's identity.
        async with VoxgateClient(gw.ws_url, body["token"], token_via="subprotocol") as client:
            assert await pong(client)
            live = await http.get(
                f"/api/realtime/sessions/{body['sessionId']}", headers=bearer(make_jwt("alice"))
            )
            assert live.status_code == 200 and live.json()["userId"] == "alice"
            # Second use, even while the first session is open: refused.
            error, code = await refusal(gw.ws_url, additional_headers=bearer(body["token"]))
            assert code == 4401 and "already used" in error["message"]
        # Expired before use.
        gw.state.authenticator.session_tokens.ttl_s = 0
        stale = (await http.post("/api/realtime/session", headers=bearer(make_jwt("alice")))).json()
        await asyncio.sleep(0.05)
        error, code = await refusal(gw.ws_url + f"?token={stale['token']}")
        assert code == 4401 and "expired" in error["message"]


async def test_token_endpoint_is_rate_limited_per_user(make_settings, gateway_factory) -> None:
    settings = make_settings(auth="jwt", jwt_secret=SECRET, token_requests_per_min=3)
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        alice = bearer(make_jwt("alice"))
        codes = [
            (await http.post("/api/realtime/session", headers=alice)).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 200]
        limited = await http.post("/api/realtime/session", headers=alice)
        assert limited.status_code == 429
        assert (
            limited.json()["code"] == "rate_limited" and "3 per minute" in limited.json()["detail"]
        )
        assert int(limited.headers["retry-after"]) >= 1
        # Per user: bob still has his allowance; a fresh JWT for alice does not reset hers.
        assert (
            await http.post("/api/realtime/session", headers=bearer(make_jwt("bob")))
        ).status_code == 200
        assert (
            await http.post("/api/realtime/session", headers=bearer(make_jwt("alice", ttl=900)))
        ).status_code == 429


async def test_token_endpoint_with_auth_off(make_settings, gateway_factory) -> None:
    settings = make_settings(token_requests_per_min=2, allowed_engines=["openai"])
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        minted = await http.post("/api/realtime/session")
        assert minted.status_code == 200
        body = minted.json()
        # The token is honoured, so the session gets the id the endpoint promised.
        async with VoxgateClient(gw.ws_url, body["token"]) as client:
            assert await pong(client)
            assert body["sessionId"] in gw.state.sessions
        # A used or unknown token is ignored with auth off: anyone may connect anyway.
        async with VoxgateClient(gw.ws_url, body["token"]) as client:
            assert await pong(client)
            assert body["sessionId"] not in gw.state.sessions
        # Provider credentials spend money: they need a real user.
        direct = await http.post("/api/realtime/session", json={"direct": "openai"})
        assert direct.status_code == 403 and "VOXGATE_AUTH=jwt" in direct.json()["detail"]
        # Anonymous callers are limited by address (identities are fresh per request).
        assert (await http.post("/api/realtime/session")).status_code == 429


async def test_origin_allowlist_on_ws_and_token_endpoint(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings()) as gw:
        # Default: the server's own origin and loopback pages only.
        for origin in ("https://evil.example", "null", "file://", "http://127.0.0.1.evil.example"):
            error, code = await refusal(gw.ws_url, origin=origin)  # type: ignore[arg-type]
            assert code == 4403 and error["code"] == "forbidden_origin", origin
        # A reason quoting a long non-ASCII origin still fits the close frame (not 1006).
        long_origin = "http://" + "é" * 100 + ".example"
        error, code = await refusal(gw.ws_url, additional_headers={"Origin": long_origin})
        assert code == 4403 and error["code"] == "forbidden_origin"
        for origin in ("http://localhost:5173", "http://127.0.0.1:3000", gw.http_url):
            async with VoxgateClient(gw.ws_url, origin=origin) as client:
                assert await pong(client), origin
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            evil = await http.post(
                "/api/realtime/session", headers={"Origin": "https://evil.example"}
            )
            assert evil.status_code == 403 and evil.json()["code"] == "forbidden_origin"
            assert "access-control-allow-origin" not in evil.headers
    settings = make_settings(allowed_origins=["https://app.example.com"])
    async with gateway_factory(settings) as gw:
        # An explicit list replaces the loopback default; the server's own origin stays allowed.
        error, code = await refusal(gw.ws_url, origin="http://localhost:5173")  # type: ignore[arg-type]
        assert code == 4403
        for origin in ("https://app.example.com", gw.http_url):
            async with VoxgateClient(gw.ws_url, origin=origin) as client:
                assert await pong(client), origin
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            app_origin = {"Origin": "https://app.example.com"}
            ok = await http.post("/api/realtime/session", headers=app_origin)
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
            preflight = await http.options(
                "/api/realtime/session",
                headers={**app_origin, "Access-Control-Request-Method": "POST"},
            )
            assert (
                preflight.status_code == 204
                and "POST" in preflight.headers["access-control-allow-methods"]
            )
            refused = await http.options(
                "/api/realtime/session", headers={"Origin": "https://evil.example"}
            )
            assert refused.status_code == 403


# --- direct provider credentials ------------------------------------------------------------


@pytest.fixture
async def openai_sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(keys={OPENAI_KEY}) as sim:
        yield sim


@pytest.fixture
async def xi_sim() -> AsyncIterator[ElevenLabsSim]:
    async with ElevenLabsSim(api_key=XI_KEY) as sim:
        yield sim


@pytest.fixture
def direct_settings(
    make_settings: Callable[..., Settings], openai_sim: OpenAISimulator, xi_sim: ElevenLabsSim
) -> Callable[..., Settings]:
    def factory(**kw: Any) -> Settings:
        base: dict[str, Any] = {
            "auth": "jwt",
            "jwt_secret": SECRET,
            "allowed_engines": ["openai", "elevenlabs"],
            "openai_api_key": OPENAI_KEY,
            "openai_api_base": openai_sim.api_base,
            "openai_url": openai_sim.url,
            "elevenlabs_api_key": XI_KEY,
            "elevenlabs_agent_id": "agent_sim",
            "elevenlabs_api_base": xi_sim.api_base,
            "elevenlabs_url": xi_sim.ws_url,
        }
        base.update(kw)
        return make_settings(**base)

    return factory


async def test_direct_openai_client_secret(
    direct_settings, gateway_factory, openai_sim: OpenAISimulator
) -> None:
    async with (
        gateway_factory(direct_settings()) as gw,
        httpx.AsyncClient(base_url=gw.http_url) as http,
    ):
        assert (
            await http.post("/api/realtime/session", json={"direct": "openai"})
        ).status_code == 401
        resp = await http.post(
            "/api/realtime/session",
            headers=bearer(make_jwt("alice")),
            json={"direct": "openai", "voice": "marin"},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["provider"] == "openai" and body["clientSecret"].startswith("ek_")
        assert body["clientSecret"] in openai_sim.ephemeral  # the simulator minted exactly this
        assert body["expiresAt"] > time.time() and body["callsUrl"].endswith("/realtime/calls")
        assert OPENAI_KEY not in resp.text
        # The ephemeral secret really opens an upstream session for the browser.
        async with connect(
            openai_sim.url,
            subprotocols=["realtime", f"openai-insecure-api-key.{body['clientSecret']}"],  # type: ignore[list-item]
        ) as ws:
            first = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert first["type"] == "session.created"
        bad = await http.post(
            "/api/realtime/session", headers=bearer(make_jwt("bob")), json={"direct": "gemini"}
        )
        assert bad.status_code == 422
    # A revoked key: a clear 502 sentence without the key.
    openai_sim.faults.invalid_key = True
    async with (
        gateway_factory(direct_settings()) as gw,
        httpx.AsyncClient(base_url=gw.http_url) as http,
    ):
        resp = await http.post(
            "/api/realtime/session", headers=bearer(make_jwt("alice")), json={"direct": "openai"}
        )
        assert resp.status_code == 502 and resp.json()["code"] == "upstream_error"
        assert "Incorrect API key" in resp.json()["detail"] and OPENAI_KEY not in resp.text
    # Not configured, or not an engine this server offers.
    async with gateway_factory(direct_settings(openai_api_key=None)) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            resp = await http.post(
                "/api/realtime/session",
                headers=bearer(make_jwt("alice")),
                json={"direct": "openai"},
            )
            assert resp.status_code == 503 and "OPENAI_API_KEY" in resp.json()["detail"]
    async with gateway_factory(direct_settings(allowed_engines=[])) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            resp = await http.post(
                "/api/realtime/session",
                headers=bearer(make_jwt("alice")),
                json={"direct": "openai"},
            )
            assert resp.status_code == 403 and "not enabled" in resp.json()["detail"]


async def test_direct_elevenlabs_signed_url(
    direct_settings, gateway_factory, xi_sim: ElevenLabsSim
) -> None:
    async with (
        gateway_factory(direct_settings()) as gw,
        httpx.AsyncClient(base_url=gw.http_url) as http,
    ):
        resp = await http.post(
            "/api/realtime/session",
            headers=bearer(make_jwt("alice")),
            json={"direct": "elevenlabs"},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["provider"] == "elevenlabs"
        assert body["signedUrl"].startswith(xi_sim.ws_url + "?")
        assert "conversation_signature=" in body["signedUrl"] and XI_KEY not in resp.text
        assert 14 * 60 < body["expiresAt"] - time.time() <= 15 * 60
        assert xi_sim.rest_calls[-1][2] == 200
    async with gateway_factory(direct_settings(elevenlabs_api_key="xi-wrong-key-0123456789")) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            resp = await http.post(
                "/api/realtime/session",
                headers=bearer(make_jwt("alice")),
                json={"direct": "elevenlabs"},
            )
            assert resp.status_code == 502 and "ELEVENLABS_API_KEY" in resp.json()["detail"]
            assert "xi-wrong-key" not in resp.text
    async with gateway_factory(direct_settings(elevenlabs_agent_id=None)) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            resp = await http.post(
                "/api/realtime/session",
                headers=bearer(make_jwt("alice")),
                json={"direct": "elevenlabs"},
            )
            assert (
                resp.status_code == 503 and "VOXGATE_ELEVENLABS_AGENT_ID" in resp.json()["detail"]
            )


# --- operators: `voxgate token`, `voxgate serve` --------------------------------------------


async def test_cli_token_mints_a_working_jwt(make_settings, gateway_factory) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["token", "--user", "carol", "--ttl", "120"], env={"VOXGATE_JWT_SECRET": SECRET}
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "carol" and 110 <= claims["exp"] - time.time() <= 121
    async with gateway_factory(make_settings(auth="jwt", jwt_secret=SECRET)) as gw:
        async with VoxgateClient(gw.ws_url, token) as client:
            assert await pong(client)
            assert [s.user_id for s in gw.state.sessions.values()] == ["carol"]
    missing = runner.invoke(cli_app, ["token", "--user", "carol"])
    assert missing.exit_code == 2 and "VOXGATE_JWT_SECRET" in missing.output
    zero = runner.invoke(
        cli_app, ["token", "--user", "carol", "--ttl", "0"], env={"VOXGATE_JWT_SECRET": SECRET}
    )
    assert zero.exit_code == 2 and "positive" in zero.output
    empty = runner.invoke(cli_app, ["token", "--user", ""], env={"VOXGATE_JWT_SECRET": SECRET})
    assert empty.exit_code == 2 and "printable" in empty.output


def test_serve_refuses_a_public_host_without_auth(make_settings) -> None:
    sentence = check_serve_settings(make_settings(host="0.0.0.0"))
    assert sentence is not None and "refusing to serve on non-loopback host 0.0.0.0" in sentence
    assert check_serve_settings(make_settings(host="0.0.0.0", insecure=True)) is None
    assert (
        check_serve_settings(make_settings(host="0.0.0.0", auth="jwt", jwt_secret=SECRET)) is None
    )
    assert check_serve_settings(make_settings(host="::1")) is None
    assert "VOXGATE_JWT_SECRET" in (check_serve_settings(make_settings(auth="jwt")) or "")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VOXGATE_", "OPENAI_", "ELEVENLABS_"))
    }
    env["COLUMNS"] = "500"
    proc = subprocess.run(
        [sys.executable, "-m", "voxgate", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "refusing to serve on non-loopback host 0.0.0.0 without authentication" in said
    assert "--insecure" in said


# --- HTTP robustness ------------------------------------------------------------------------


def _raw_request(port: int, request: bytes) -> bytes:
    """Send raw bytes, return whatever comes back before the server closes (or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server may close mid-send: that is a valid refusal
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except OSError:
            pass
    return b"".join(chunks)


async def test_oversized_headers_and_odd_paths_never_5xx(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings(auth="jwt", jwt_secret=SECRET)) as gw:
        port = gw.port
        huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        reply = await asyncio.to_thread(_raw_request, port, huge)
        status = re.match(rb"HTTP/1\.1 (\d{3})", reply)
        assert reply == b"" or (status is not None and 400 <= int(status.group(1)) < 500), reply[
            :200
        ]
        many = (
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 900) for i in range(120))
            + b"\r\n"
        )
        reply = await asyncio.to_thread(_raw_request, port, many)
        status = re.match(rb"HTTP/1\.1 (\d{3})", reply)
        assert reply == b"" or (status is not None and int(status.group(1)) < 500), reply[:200]
        long_token = await asyncio.to_thread(
            _raw_request,
            port,
            b"GET /api/realtime/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + b"A" * 60_000
            + b"\r\nConnection: close\r\n\r\n",
        )
        assert re.match(rb"HTTP/1\.1 4\d\d", long_token), long_token[:200]
        odd = [
            "/..%2f..%2fetc%2fpasswd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/api/%00",
            "/api/realtime/sessions/%00",
            "/api/realtime/sessions/..%2f..",
            "/api/conversations/%ff%fe",
            "/" + "a" * 20_000,
            "/api/" + "x/" * 3000,
            "/ws",
            "/ws/status/../../health",
            "/static/%c0%ae%c0%ae/",
            "/index.html%00.txt",
            "//etc/passwd",
        ]
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
            for path in odd:
                for method in ("GET", "POST"):
                    resp = await http.request(method, httpx.URL(gw.http_url + path))
                    assert resp.status_code < 500, (method, path, resp.status_code)
            bodies = [
                b"{",
                b"[]",
                b'{"direct": 7}',
                b'{"direct": "openai", "voice": "' + b"v" * 5000 + b'"}',
                b"\xff\xfe\x00",
                b"null",
            ]
            for raw in bodies:
                resp = await http.post(
                    "/api/realtime/session",
                    content=raw,
                    headers={**bearer(make_jwt("alice")), "Content-Type": "application/json"},
                )
                assert resp.status_code < 500, (raw[:40], resp.status_code)
            assert (await http.get("/health")).status_code == 200


# --- `voxgate talk` with and without a token ------------------------------------------------


async def _talk(url: str, *extra: str) -> tuple[int, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VOXGATE_", "OPENAI_", "ELEVENLABS_"))
    }
    env["COLUMNS"] = "500"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxgate", "talk", "--url", url, "--text", "hello there",
        "--timeout", "30", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, " ".join(out.decode(errors="replace").split())


async def test_voxgate_talk_works_with_a_token_and_is_refused_without(
    direct_settings, gateway_factory
) -> None:
    settings = direct_settings(engine="openai", allowed_engines=[])
    async with gateway_factory(settings) as gw:
        code, out = await _talk(gw.ws_url)
        # Refused, and the reason reaches the user. (Whether it comes as a clean sentence or
        # inside a traceback depends on a race in `voxgate talk`.)
        assert code == 1 and "authentication required" in out, out
        code, out = await _talk(gw.ws_url, "--token", make_jwt("dave"))
        assert code == 0, out
        assert "assistant:" in out and "response completed" in out, out
        _, total = await gw.state.store.list_conversations(user_id="dave")
        assert total == 1, "the conversation belongs to the token's user"


async def test_dns_rebinding_is_refused_while_auth_is_off(make_settings, gateway_factory) -> None:
    """A hostile page whose name resolves to 127.0.0.1 looks same-origin to the browser."""
    async with gateway_factory(make_settings()) as gw:
        rebound = f"evil.example:{gw.port}"
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        sock.setblocking(False)
        error, code = await refusal(
            f"ws://{rebound}/ws",
            origin=f"http://{rebound}",
            sock=sock,  # type: ignore[arg-type]
        )
        assert code == 4403 and error["code"] == "forbidden_origin"
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            browser = {"Host": rebound, "Sec-Fetch-Site": "same-origin"}
            refused = await http.get("/api/conversations", headers=browser)
            assert refused.status_code == 403 and "DNS rebinding" in refused.json()["detail"]
            assert (await http.post("/api/realtime/session", headers=browser)).status_code == 403
            # Scripts and SDKs (no browser marks) and loopback pages are unaffected.
            assert (
                await http.get("/api/conversations", headers={"Host": rebound})
            ).status_code == 200
            loopback = {"Host": f"localhost:{gw.port}", "Sec-Fetch-Site": "same-origin"}
            assert (await http.get("/api/conversations", headers=loopback)).status_code == 200
    # With auth on, a rebound page gains nothing (it holds no token): the server's own origin,
    # whatever its public name, stays allowed.
    async with gateway_factory(make_settings(auth="jwt", jwt_secret=SECRET)) as gw:
        public = f"voice.example:{gw.port}"
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        sock.setblocking(False)
        async with connect(
            f"ws://{public}/ws",
            origin=f"http://{public}",  # type: ignore[arg-type]
            additional_headers=bearer(make_jwt("alice")),
            sock=sock,
        ) as ws:
            await ws.send('{"type":"ping","id":1}')
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"


# --- any token the server did not sign is refused with a sentence, never an exception -------


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


#: Built once: pydantic-settings reads the environment on every construction.
_AUTHENTICATOR = Authenticator(Settings(_env_file=None, auth="jwt", jwt_secret=SECRET))  # type: ignore[call-arg]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "crit", "b64"]), _json, max_size=3
    ),
    claims=st.dictionaries(
        st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "admin"]), _json, max_size=5
    ),
    signature=st.binary(max_size=48),
    raw=st.text(max_size=80),
)
def test_unsigned_or_malformed_tokens_raise_auth_error_only(
    header: dict[str, Any], claims: dict[str, Any], signature: bytes, raw: str
) -> None:
    crafted = ".".join(
        (
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(claims).encode()),
            b64url(signature),
        )
    )
    for candidate in (crafted, raw, "vxs_" + raw):
        with pytest.raises(AuthError):
            _AUTHENTICATOR.verify_token(candidate)


_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    ("case", "request_bytes"),
    [
        # One 200 KB header: h11 gives up before the head is whole.
        ("one huge header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"),
        # 80 KB in many headers, parsed whole: the app-level check answers.
        ("many headers", b"GET /health HTTP/1.1\r\nHost: x\r\n"
         + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 4000) for i in range(20)) + b"\r\n"),
        ("handshake, many headers", _UPGRADE
         + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 4000) for i in range(20)) + b"\r\n"),
        # The WebSocket parser's own per-line limit (8 KiB) answers 431 too, in plain text.
        ("handshake, one 9 KB header", _UPGRADE + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n"),
    ],
)
async def test_headers_over_the_limit_get_431(make_settings, gateway_factory, case, request_bytes) -> None:
    async with gateway_factory(make_settings()) as gw:
        reply = await asyncio.to_thread(_raw_request, gw.port, request_bytes)
        assert reply.startswith(b"HTTP/1.1 431 "), (case, reply[:200])
        if case != "handshake, one 9 KB header":
            assert reply.endswith(
                b'{"detail":"request headers total more than 65536 bytes","code":"payload_too_large"}'
            ), (case, reply[-200:])
        # The server is unharmed.
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            assert (await http.get("/health")).status_code == 200
