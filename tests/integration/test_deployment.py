"""Behind a reverse proxy: which client address the gateway believes."""

from __future__ import annotations

import httpx


async def _mint(http: httpx.AsyncClient, forwarded_for: str) -> int:
    answer = await http.post("/api/realtime/session", headers={"X-Forwarded-For": forwarded_for})
    return answer.status_code


async def test_rate_limits_see_the_forwarded_address_from_a_trusted_proxy(
    make_settings, gateway_factory
) -> None:
    # The test connects from 127.0.0.1, which the default trusts as a local proxy.
    settings = make_settings(token_requests_per_min=1)
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        assert await _mint(http, "203.0.113.1") == 200
        assert await _mint(http, "203.0.113.1") == 429  # the same client, over its budget
        assert await _mint(http, "203.0.113.2") == 200  # another client has its own


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    make_settings, gateway_factory
) -> None:
    settings = make_settings(token_requests_per_min=1, forwarded_allow_ips="192.0.2.10")
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        assert await _mint(http, "203.0.113.1") == 200
        # A forged header does not buy a fresh budget: the peer's own address is counted.
        assert await _mint(http, "203.0.113.2") == 429


async def test_cors_follows_the_origin_allowlist(make_settings, gateway_factory) -> None:
    """The allowlist that admits a page's WebSocket also lets it load the client and the API."""
    site = {"Origin": "https://app.example.com"}
    evil = {"Origin": "https://evil.example"}
    settings = make_settings(auth="jwt", jwt_secret="cors-test-jwt-secret-0123456789abcdefghij",
                             allowed_origins=["https://app.example.com"])  # fmt: skip
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        for path in ("/voxgate.js", "/capture-worklet.js", "/playback-worklet.js", "/api/config"):
            answer = await http.get(path, headers=site)
            assert answer.status_code == 200, path
            assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
            assert "Origin" in answer.headers["vary"]
            refused = await http.get(path, headers=evil)
            assert "access-control-allow-origin" not in refused.headers, path
        # Preflights for the JSON APIs a page calls with its bearer token.
        ask = {"Access-Control-Request-Method": "DELETE",
               "Access-Control-Request-Headers": "authorization"}  # fmt: skip
        preflight = await http.options("/api/conversations/abc", headers={**site, **ask})
        assert preflight.status_code == 204
        assert "DELETE" in preflight.headers["access-control-allow-methods"]
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        assert "access-control-allow-credentials" not in preflight.headers  # bearer, no cookies
        assert (await http.options("/api/conversations/abc", headers={**evil, **ask})).status_code == 403
        # A refusal still carries the header, so the page can read why (here: no token).
        unauthorized = await http.get("/api/conversations", headers=site)
        assert unauthorized.status_code == 401
        assert unauthorized.headers["access-control-allow-origin"] == "https://app.example.com"
        # One header, not two, where a route already set it.
        minted = await http.post("/api/realtime/session", headers={**site, "Authorization":
                                 f"Bearer {gw.state.authenticator.mint_jwt('ada')}"})  # fmt: skip
        assert minted.status_code == 200
        assert minted.headers.get_list("access-control-allow-origin") == ["https://app.example.com"]
