"""Tools on ElevenLabs: the agent's `client_tool_call` runs the gateway's tool of that name
(a server tool or the page's own) and `client_tool_result` carries the result back; the agent
speaks it. The simulator's calls are the ones the official SDK answers (test_elevenlabs_sim)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from voxgate.client import VoxgateClient
from voxgate.testing.elevenlabs_sim import ElevenLabsSim, SimAgent

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tools"
AGENT = "agent_tools"
TRIGGERS = {
    "weather": ("get_weather", {"city": "London"}),
    "where am i": ("get_location", {"precise": True}),
    "explode": ("explode", {"reason": "agent"}),
    "unknown": ("not_a_tool", {}),
}


@pytest.fixture(autouse=True)
def _tool_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


async def test_a_two_tool_conversation_on_elevenlabs(make_settings: Any, gateway_factory: Any) -> None:
    agent = SimAgent(agent_id=AGENT, tool_triggers=TRIGGERS)
    async with ElevenLabsSim(api_key="xi-tools", agents=[agent], pace=8.0) as sim:
        settings = make_settings(
            engine="elevenlabs", elevenlabs_api_key="xi-tools", elevenlabs_agent_id=AGENT,
            elevenlabs_api_base=sim.api_base, elevenlabs_url=sim.ws_url,
            tools=["weather_tools", "tests.support.tools_faulty"], tool_filler_ms=0,
        )  # fmt: skip
        async with gateway_factory(settings) as gw:
            async with VoxgateClient(gw.ws_url) as client:
                client.register_tool("get_location", lambda args: {"city": "Lyon", **args})
                ready = await client.start(tools=[{"name": "get_location"}])
                assert ready["capabilities"]["tools"] is True
                await client.user_message("what is the weather")
                first = await client.collect_reply(timeout=30)
                assert [m["status"] for m in first.tool_statuses] == ["running", "done"]
                assert '"sky":"light rain"' in first.assistant_text
                await client.user_message("where am i")
                second = await client.collect_reply(timeout=30)
                assert '"city":"Lyon"' in second.assistant_text
                # A tool that raises and a name the gateway does not know: the agent hears
                # an error, the conversation goes on.
                await client.user_message("explode please")
                failed = await client.collect_reply(timeout=30)
                assert failed.assistant_text.startswith("The explode tool failed")
                await client.user_message("an unknown tool")
                unknown = await client.collect_reply(timeout=30)
                assert "no tool named 'not_a_tool'" in unknown.assistant_text
                await client.stop()
            await gw.wait_idle()
            record = await gw.state.store.get_conversation(ready["conversationId"])
    conv = sim.conversations[-1]
    assert [r["is_error"] for r in conv.tool_results] == [False, False, True, True]
    assert json.loads(conv.tool_results[0]["result"])["city"] == "London"
    stored = [json.loads(t.text) for t in record.turns if t.role == "tool"]
    assert [(t["name"], t["status"]) for t in stored] == [
        ("get_weather", "done"), ("get_location", "done"), ("explode", "error"), ("not_a_tool", "error"),
    ]  # fmt: skip
