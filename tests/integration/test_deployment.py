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
