"""Tools on the cascade: the chat endpoint (the LLM simulator, checked against the official
`openai` SDK) gets the tools, streams `tool_calls`, and the engine loops — calls, results,
the model again — until it answers in words, which are spoken like any reply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from voxgate.client import VoxgateClient
from voxgate.testing.llm_sim import LLMSimulator
from voxgate.testing.tooling import ToolTrigger

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tools"
LOCATION = {"type": "object", "properties": {"precise": {"type": "boolean"}}}
TRIGGERS = [
    ToolTrigger.one("weather in paris", "get_weather", {"city": "Paris"}),
    ToolTrigger.one("where am i", "get_location", {"precise": True}),
    ToolTrigger("both please", (("get_weather", {"city": "Tokyo"}), ("get_location", {}))),
    ToolTrigger.one("explode now", "explode", {"reason": "cascade"}),
    ToolTrigger.one("take your time", "slow", {"seconds": 2}),
]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip


@pytest.fixture(autouse=True)
def _tool_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


async def test_the_llm_simulator_streams_tool_calls_the_sdk_reads() -> None:
    async with LLMSimulator(reply="Plain words.", tool_triggers=TRIGGERS) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-sim", max_retries=0)
        asked = [{"role": "user", "content": "what is the weather in paris"}]
        stream = await client.chat.completions.create(
            model="sim-model", messages=asked, tools=[WEATHER], stream=True  # type: ignore[list-item]
        )
        calls: dict[int, dict[str, str]] = {}
        finish = None
        async for chunk in stream:  # each chunk parsed by the SDK's ChatCompletionChunk
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for part in choice.delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = part.id or call["id"]
                if part.function is not None:
                    call["name"] = part.function.name or call["name"]
                    call["arguments"] += part.function.arguments or ""
        assert finish == "tool_calls" and len(calls) == 1
        assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}
        # The whole answer, not streamed, parsed by the SDK too.
        whole = await client.chat.completions.create(model="sim-model", messages=asked, tools=[WEATHER])  # type: ignore[list-item]
        assert whole.choices[0].finish_reason == "tool_calls"
        assert whole.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[index,union-attr]
        # With the result, the model answers in words that quote it.
        answered = [*asked,
                    {"role": "assistant", "content": None, "tool_calls": [{"id": calls[0]["id"],
                     "type": "function", "function": {"name": "get_weather", "arguments": calls[0]["arguments"]}}]},
                    {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"}]  # fmt: skip
        words = await client.chat.completions.create(model="sim-model", messages=answered, tools=[WEATHER])  # type: ignore[arg-type,list-item]
        assert words.choices[0].message.content == "The tools said: sunny."
        # A tool result that answers no call is refused, as the real API does.
        with pytest.raises(openai.BadRequestError, match="must be a response to a preceeding message"):
            await client.chat.completions.create(
                model="sim-model", messages=[*asked, {"role": "tool", "tool_call_id": "x", "content": "y"}]  # type: ignore[list-item]
            )
        with pytest.raises(openai.BadRequestError, match="did not have response messages"):
            await client.chat.completions.create(model="sim-model", messages=answered[:2])  # type: ignore[arg-type]
        # Without the tool declared, the model does not call it.
        plain = await client.chat.completions.create(model="sim-model", messages=asked)  # type: ignore[arg-type]
        assert plain.choices[0].message.content == "Plain words."


@pytest.fixture
def cascade_gateway(
    make_settings: Callable[..., Any], gateway_factory: Callable[..., Any]
) -> Callable[..., Any]:
    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[tuple[Any, LLMSimulator]]:
        # No fillers unless a test asks: a loaded machine must not turn a quick call into one.
        overrides.setdefault("tool_filler_ms", 0)
        async with LLMSimulator(reply="I am here.", tool_triggers=TRIGGERS) as sim:
            settings = make_settings(
                engine="cascade", llm_url=sim.base_url,
                tools=["weather_tools", "tests.support.tools_faulty"], **overrides,
            )  # fmt: skip
            async with gateway_factory(settings) as gw:
                yield gw, sim

    return run


def client_with_location(gw: Any) -> VoxgateClient:
    client = VoxgateClient(gw.ws_url)
    client.register_tool("get_location", lambda args: {"city": "Lyon", **args},
                         description="Where the user is.", parameters=LOCATION)  # fmt: skip
    return client


async def test_a_two_tool_conversation_on_the_cascade(cascade_gateway: Callable[..., Any]) -> None:
    async with cascade_gateway() as (gw, sim):
        async with client_with_location(gw) as client:
            ready = await client.start()
            assert ready["capabilities"]["tools"] is True and "get_location" in ready["tools"]
            await client.user_message("what is the weather in paris")
            first = await client.collect_reply(timeout=60)
            assert [m["status"] for m in first.tool_statuses] == ["running", "done"]
            assert "sunny" in first.assistant_text and first.audio  # spoken, like any reply
            await client.user_message("where am i")
            second = await client.collect_reply(timeout=60)
            assert "Lyon" in second.assistant_text
            # Parallel calls in one round.
            await client.user_message("both please")
            both = await client.collect_reply(timeout=60)
            assert "cloudy" in both.assistant_text and "Lyon" in both.assistant_text
            await client.stop()
        await gw.wait_idle()
        record = await gw.state.store.get_conversation(ready["conversationId"])
    sent = sim.requests[-1].json
    assert {t["function"]["name"] for t in sent["tools"]} >= {"get_weather", "get_location"}
    messages = sent["messages"]
    calls = [m for m in messages if m.get("tool_calls")]
    assert [c["function"]["name"] for m in calls for c in m["tool_calls"]] == [
        "get_weather", "get_location", "get_weather", "get_location",
    ]  # fmt: skip
    results = [m for m in messages if m["role"] == "tool"]
    assert len(results) == 4 and "sunny" in results[0]["content"]
    tool_turns = [json.loads(t.text) for t in record.turns if t.role == "tool"]
    # Parallel calls are stored as each one ends: in either order.
    names = [t["name"] for t in tool_turns]
    assert names[:2] == ["get_weather", "get_location"] and sorted(names[2:]) == ["get_location", "get_weather"]


async def test_a_failing_tool_on_the_cascade(cascade_gateway: Callable[..., Any]) -> None:
    async with cascade_gateway() as (gw, _sim), client_with_location(gw) as client:
        await client.start()
        await client.user_message("explode now")
        reply = await client.collect_reply(timeout=60)
        assert reply.tool_statuses[-1]["status"] == "error"
        assert "the tool exploded: cascade" in reply.assistant_text
        await client.user_message("what is the weather in paris")
        assert "sunny" in (await client.collect_reply(timeout=60)).assistant_text


async def test_resume_gives_the_calls_back_to_the_chat_model(cascade_gateway: Callable[..., Any]) -> None:
    async with cascade_gateway() as (gw, sim):
        async with client_with_location(gw) as client:
            ready = await client.start()
            await client.user_message("what is the weather in paris")
            await client.collect_reply(timeout=60)
            await client.stop()
        await gw.wait_idle()
        async with client_with_location(gw) as client:
            await client.start(conversationId=ready["conversationId"])
            await client.user_message("hello again")
            reply = await client.collect_reply(timeout=60)
            assert reply.assistant_text == "I am here."
    roles = [m["role"] for m in sim.requests[-1].json["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert "sunny" in sim.requests[-1].json["messages"][3]["content"]


async def test_a_slow_tool_gets_a_spoken_filler_in_the_same_reply(cascade_gateway: Callable[..., Any]) -> None:
    async with cascade_gateway(tool_filler_ms=300) as (gw, sim), client_with_location(gw) as client:
        await client.start()
        await client.user_message("take your time")
        reply = await client.collect_reply(timeout=60)
        # One reply: the filler while the tool ran, then the answer.
        assert reply.assistant_text == "One moment, please. The tools said: slept 2 s."
        statuses = [m for m in reply.events if m["type"] in ("tool_status", "transcript") and m.get("role") != "user"]
        first_words = next(i for i, m in enumerate(statuses) if m["type"] == "transcript")
        done = next(i for i, m in enumerate(statuses) if m.get("status") == "done")
        assert first_words < done  # the filler was heard before the tool finished
        await client.stop()
    # The model's history keeps the call and the answer, not the filler.
    last = sim.requests[-1].json["messages"]
    assert not any("One moment" in str(m.get("content")) for m in last)
