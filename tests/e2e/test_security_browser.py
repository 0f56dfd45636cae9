"""With `VOXGATE_AUTH=jwt`, a real browser page works with a token and is refused without one.

Debian's Chromium (driven by Playwright's async API, in this test's event loop next to the
gateway and the OpenAI simulator) loads the gateway's own page and, from it, does what the
browser client does: mint a single-use token at `POST /api/realtime/session` with the user's
JWT, open `/ws` offering `voxgate.v1` and `voxgate.bearer.<token>` (browsers cannot set headers
on a WebSocket), and hold a turn. Chromium itself checks that the server selected one of the
offered subprotocols, and sends its real `Origin`.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from voxgate.testing.openai_sim import OpenAISimulator

pytest.importorskip("playwright.async_api")
from playwright.async_api import async_playwright  # noqa: E402

pytestmark = pytest.mark.browser

SECRET = "browser-security-jwt-secret-0123456789abcdef"
OPENAI_KEY = "sk-test-browser-security-0123456789"
CHROMIUM = os.environ.get("VOXGATE_TEST_CHROMIUM", "/usr/bin/chromium")

#: Runs in the page: one handshake, then everything received until `until` or the close.
PAGE_SCRIPT = """
async ({wsUrl, protocols, messages, until}) => {
  const ws = new WebSocket(wsUrl, protocols);
  const seen = [];
  return await new Promise((resolve) => {
    const timer = setTimeout(() => { ws.close(); resolve({seen, protocol: ws.protocol, timeout: true}); }, 30000);
    ws.onopen = () => { for (const m of messages) ws.send(JSON.stringify(m)); };
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      seen.push(msg);
      if (msg.type === "session_ready") ws.send(JSON.stringify({type: "user_message", text: "hello there"}));
      if (until && msg.type === until) { clearTimeout(timer); const p = ws.protocol; ws.close(1000); resolve({seen, protocol: p}); }
    };
    ws.onclose = (e) => { clearTimeout(timer); resolve({seen, protocol: ws.protocol, code: e.code, reason: e.reason}); };
  });
}
"""

MINT_SCRIPT = """
async (jwt) => {
  const headers = jwt ? {Authorization: `Bearer ${jwt}`} : {};
  const r = await fetch("/api/realtime/session", {method: "POST", headers});
  return {status: r.status, body: await r.json()};
}
"""


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(keys={OPENAI_KEY}, pace=8.0) as s:
        yield s


async def test_browser_page_works_with_a_token_and_is_refused_without(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - a one-off stat, not I/O in a loop
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (it apt-installs chromium)")
    settings = make_settings(
        auth="jwt",
        jwt_secret=SECRET,
        engine="openai",
        openai_api_key=OPENAI_KEY,
        openai_url=sim.url,
        openai_api_base=sim.api_base,
        openai_session_recycle_s=0.0,
    )
    user_jwt = jwt.encode({"sub": "erin", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    async with gateway_factory(settings) as gw, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
            timeout=60_000,
        )
        try:
            page = await browser.new_page()
            await page.goto(gw.http_url + "/", timeout=30_000)

            async def run(protocols: list[str], until: str | None = None) -> dict[str, Any]:
                args = {
                    "wsUrl": gw.ws_url,
                    "protocols": protocols,
                    "messages": [{"type": "start", "turnDetection": {"mode": "manual"}}],
                    "until": until,
                }
                result: dict[str, Any] = await page.evaluate(PAGE_SCRIPT, args)
                return result

            # No token: the page learns why (an error it can show) and the close code.
            refused = await run(["voxgate.v1"])
            assert refused["code"] == 4401
            assert refused["seen"][0]["code"] == "unauthorized"
            assert "authentication required" in refused["seen"][0]["message"]
            assert (await page.evaluate(MINT_SCRIPT, None))["status"] == 401

            # With the user's JWT: mint a single-use token, then hold a turn with it.
            minted = await page.evaluate(MINT_SCRIPT, user_jwt)
            assert minted["status"] == 200, minted
            token = minted["body"]["token"]
            talked = await run(["voxgate.v1", f"voxgate.bearer.{token}"], until="response_done")
            assert talked["protocol"] == "voxgate.v1"  # the token is never echoed back
            types = [m["type"] for m in talked["seen"]]
            assert "session_ready" in types and types[-1] == "response_done", types
            ready = next(m for m in talked["seen"] if m["type"] == "session_ready")
            assert ready["sessionId"] == minted["body"]["sessionId"]
            assert any(
                m["type"] == "transcript" and m["role"] == "assistant" for m in talked["seen"]
            )

            # The same token a second time: refused.
            again = await run(["voxgate.v1", f"voxgate.bearer.{token}"])
            assert again["code"] == 4401 and "already used" in again["seen"][0]["message"]
        finally:
            await browser.close()
