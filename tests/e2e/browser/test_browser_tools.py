"""Tools in real Chromium: the page offers a tool (`client.registerTool`) whose handler runs in
the browser, the model calls it when it hears the user (the OpenAI simulator's scripted
trigger), the answer quotes what the page returned, and the transcript shows the tool
activity, as it does for a server tool called from a typed message."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.support.browser import ServerProcess, _clean_env, _spawn, gateway_env, start_gateway

pytestmark = pytest.mark.browser

TRANSCRIPT = '[data-testid="transcript"]'
EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "tools"


@pytest.fixture(scope="module")
def tools_sim(tmp_path_factory: pytest.TempPathFactory, browser_assets: dict[str, Path]) -> Iterator[ServerProcess]:
    """The OpenAI simulator hearing the fake microphone, calling tools on scripted words."""
    workdir = tmp_path_factory.mktemp("tools-sim")
    command = [
        sys.executable, "-m", "voxgate.testing.openai_sim", "--port", "0", "--key", "sk-browser",
        "--pace", "4", "--grammar", str(browser_assets["grammar"]),
        "--tool-trigger", 'hear me=get_location:{"precise": true}',
        "--tool-trigger", 'weather in paris=get_weather:{"city": "Paris"}',
    ]  # fmt: skip
    sim = _spawn("tools-sim", command, _clean_env(), workdir)
    try:
        match = sim.wait_for_line(r"simulator on ws://127\.0\.0\.1:(\d+)(/\S*)", timeout=45)
        sim.port = int(match.group(1))
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def tools_gateway(
    tmp_path_factory: pytest.TempPathFactory, browser_assets: dict[str, Path], tools_sim: ServerProcess
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("tools-gateway")
    env = gateway_env(
        workdir, browser_assets["grammar"],
        VOXGATE_ENGINE="openai", OPENAI_API_KEY="sk-browser",
        VOXGATE_OPENAI_URL=f"ws://127.0.0.1:{tools_sim.port}/v1/realtime",
        VOXGATE_TOOLS="weather_tools", VOXGATE_TOOL_FILLER_MS="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")])),
    )  # fmt: skip
    server = start_gateway(workdir, env)
    try:
        yield server
    finally:
        server.stop()


def test_a_page_tool_and_a_server_tool_in_chromium(open_page, tools_gateway) -> None:
    ps = open_page(f"{tools_gateway.url}/?prebufferMs=200")
    page = ps.page
    # The page's own tool: its handler runs here, in the browser.
    page.evaluate(
        """() => {
          window.toolCalls = [];
          window.voxgateDebug.client.registerTool(
            "get_location",
            { description: "Where the user is.",
              parameters: { type: "object", properties: { precise: { type: "boolean" } } } },
            async (args, call) => { window.toolCalls.push({ args, callId: call.callId });
                                    return { city: "Lyon", precise: args.precise }; });
        }"""
    )
    page.click('[data-testid="start"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute("data-status", "connected", timeout=30_000)
    assert "get_location" in ps.debug("d.client.session.tools")

    # The fake microphone says "hello can you hear me": the model calls the page's tool.
    assistant = page.locator(f'{TRANSCRIPT} [data-role="assistant"][data-final="true"] .text')
    expect(assistant.last).to_contain_text('"city":"Lyon"', timeout=60_000)
    calls = page.evaluate("window.toolCalls")
    assert len(calls) == 1 and calls[0]["args"] == {"precise": True}
    tool_line = page.locator(f'{TRANSCRIPT} [data-role="tool"]').first
    expect(tool_line).to_have_attribute("data-status", "done", timeout=30_000)
    expect(tool_line.locator(".text")).to_contain_text("get_location: done")

    # A server tool, from a typed message: the same activity in the transcript.
    page.fill('[data-testid="text-input"]', "what is the weather in paris")
    page.click('[data-testid="send"]')
    expect(assistant.last).to_contain_text('"sky":"sunny"', timeout=60_000)
    weather = page.locator(f'{TRANSCRIPT} [data-role="tool"]', has_text="get_weather")
    expect(weather).to_have_attribute("data-status", "done", timeout=30_000)
    roles = page.locator(f"{TRANSCRIPT} > *").evaluate_all("els => els.map(e => e.dataset.role)")
    assert roles.index("tool") < len(roles) - 1 and roles[-1] == "assistant", roles
    assert ps.errors == []
