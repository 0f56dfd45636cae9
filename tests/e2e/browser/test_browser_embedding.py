"""Embedding from another site: a page served on another port imports `voxgate.js` from the
gateway, which loads its worklets from next to itself, fetches the JSON API, and holds a
conversation, all cross-origin in Chromium; a site not on the allowlist gets none of it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.browser import free_port, gateway_env


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")

PAGE = """<!doctype html>
<html><body>
<script type="module">
  const gw = "GATEWAY";
  window.result = { events: [] };
  try {
    const { VoxgateClient } = await import(`${gw}/voxgate.js`);
    window.result.config = await (await fetch(`${gw}/api/config`)).json();
    const client = new VoxgateClient({ url: gw.replace("http", "ws") + "/ws" });
    window.client = client;
    client.on((event) => window.result.events.push({ type: event.type, role: event.role,
      final: event.final, text: event.text, message: event.message }));
    await client.start({ turnDetection: { mode: "manual" } });
    window.result.audioMode = client.audioMode;
    client.sendUserMessage("what time is it");
  } catch (error) {
    window.result.error = String(error);
  }
  window.result.loaded = true;
</script>
</body></html>
"""


@contextlib.contextmanager
def page_server(folder: Path, port: int) -> Iterator[str]:
    """Another site: a plain static server on its own port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_client_module_worklets_and_api_work_from_another_origin(
    browser, gateway_starter, browser_assets, tmp_path
) -> None:
    site_port, other_port = free_port(), free_port()
    site = f"http://127.0.0.1:{site_port}"
    env = gateway_env(tmp_path, browser_assets["grammar"], VOXGATE_ALLOWED_ORIGINS=site)
    gateway = gateway_starter(env)
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "index.html").write_text(PAGE.replace("GATEWAY", gateway.url))
    with page_server(folder, site_port) as url:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"{url}/index.html")
            page.wait_for_function("() => window.result && window.result.loaded", timeout=30_000)
            result = page.evaluate("window.result")
            assert "error" not in result, result
            assert result["config"]["protocol"] == 1
            assert result["audioMode"] == "full"  # both worklets loaded from the gateway
            page.wait_for_function(
                "() => window.result.events.some(e => e.type === 'response_done')", timeout=30_000
            )
            events = page.evaluate("window.result.events")
            finals = [e["text"] for e in events if e["type"] == "transcript" and e["role"] == "assistant" and e["final"]]  # fmt: skip
            assert finals and "what time is it" in finals[-1], events
            page.wait_for_function("() => window.client.debug.audioReceivedBytes > 24000")
            page.evaluate("window.client.stop()")
        finally:
            context.close()
    # The same page from a site not on the list: the module import itself is refused.
    with page_server(folder, other_port) as url:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"{url}/index.html")
            page.wait_for_function("() => window.result && window.result.loaded", timeout=30_000)
            result = page.evaluate("window.result")
            assert "error" in result and "config" not in result, result
        finally:
            context.close()
