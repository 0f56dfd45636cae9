"""Tools through the gateway with the OpenAI engine and its simulator: server tools (Python),
client tools over the protocol, parallel calls, storage as `tool` turns, restoring the calls
after a reconnect and on resume, and every bad input the protocol must survive.

The simulator makes its function calls on scripted triggers (`ToolTrigger`) and speaks the
outputs it receives back, so an answer that quotes a tool's result proves the result reached
the model.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import clean_env
from voxgate.client import VoxgateClient
from voxgate.testing.openai_sim import OpenAISimulator, SimConnection, ToolTrigger

KEY = "sk-tools-test"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tools"
LOCATION = {"type": "object", "properties": {"precise": {"type": "boolean"}}}
TRIGGERS = [
    ToolTrigger.one("weather in paris", "get_weather", {"city": "Paris"}),
    ToolTrigger.one("where am i", "get_location", {"precise": True}),
    ToolTrigger(
        "both please",
        (("get_weather", {"city": "London"}), ("get_location", {"precise": False})),
    ),
    ToolTrigger.one("broken json", "get_weather", '{"city": "Par'),
    ToolTrigger.one("wrong type", "get_weather", {"city": 42}),
    ToolTrigger.one("invent one", "no_such_tool", {}, undeclared=True),
    ToolTrigger.one("explode now", "explode", {"reason": "test"}),
    ToolTrigger.one("hang now", "hang", {}),
    ToolTrigger.one("locate bad", "get_location", {"precise": "very"}),
    ToolTrigger.one("take your time", "slow", {"seconds": 2}),
]


@pytest.fixture(autouse=True)
def _tool_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.fixture
def tools_gateway(
    make_settings: Callable[..., Any], gateway_factory: Callable[..., Any]
) -> Callable[..., Any]:
    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[tuple[Any, OpenAISimulator]]:
        # No fillers unless a test asks: a loaded machine must not turn a quick call into one.
        overrides.setdefault("tool_filler_ms", 0)
        async with OpenAISimulator(keys=[KEY], pace=8.0, tool_triggers=TRIGGERS) as sim:
            settings = make_settings(
                engine="openai", openai_api_key=KEY, openai_url=sim.url,
                tools=["weather_tools", "tests.support.tools_faulty"],
                reconnect_base_s=0.05, reconnect_max_s=0.2, **overrides,
            )  # fmt: skip
            async with gateway_factory(settings) as gw:
                yield gw, sim

    return run


def located(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"city": "Lyon", "precise": arguments.get("precise", False)}


def client_with_location(gw: Any) -> VoxgateClient:
    client = VoxgateClient(gw.ws_url)
    client.register_tool("get_location", located, description="Where the user is.", parameters=LOCATION)
    return client


def items_created(conn: SimConnection) -> list[dict[str, Any]]:
    return [e["item"] for e in conn.received if e.get("type") == "conversation.item.create"]


def model_outputs(conn: SimConnection) -> list[str]:
    return [i["output"] for i in items_created(conn) if i["type"] == "function_call_output"]


async def test_server_and_client_tools_in_one_conversation(tools_gateway: Callable[..., Any]) -> None:
    async with tools_gateway() as (gw, sim):
        async with client_with_location(gw) as client:
            await two_tool_turns(client)
        await gw.wait_idle()
        record = await gw.state.store.get_conversation(client.session["conversationId"])
        database_url = gw.state.settings.database_url
    conn = sim.accepted[-1]
    session = next(e for e in conn.received if e.get("type") == "session.update")["session"]
    declared = {t["name"]: t for t in session["tools"]}
    assert declared["get_weather"]["parameters"]["required"] == ["city"]
    assert declared["get_location"]["description"] == "Where the user is."
    assert all(t["type"] == "function" for t in session["tools"])
    outputs = model_outputs(conn)
    assert json.loads(outputs[0]) == {"city": "Paris", "sky": "sunny", "temperature": 21, "unit": "celsius"}
    assert json.loads(outputs[1]) == {"city": "Lyon", "precise": True}
    tool_turns = [json.loads(t.text) for t in record.turns if t.role == "tool"]
    assert [t["name"] for t in tool_turns] == ["get_weather", "get_location"]
    assert tool_turns[0]["arguments"] == {"city": "Paris"} and tool_turns[0]["status"] == "done"
    assert "sunny" in tool_turns[0]["output"]
    roles = [t.role for t in record.turns]
    assert roles.index("tool") > roles.index("user")
    # `voxgate conversations show` lists the calls with their results.
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voxgate", "conversations", "show", record.id],
        env=clean_env(VOXGATE_DATABASE_URL=database_url), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert '*Tool call:* `get_weather({"city":"Paris"}) -> {"city":"Paris","sky":"sunny"' in shown.stdout
    assert '*Tool call:* `get_location({"precise":true}) -> {"city":"Lyon"' in shown.stdout


async def two_tool_turns(client: VoxgateClient) -> None:
    """A server tool, then a client tool, each answered in words that quote its result."""
    ready = await client.start()
    assert ready["tools"] == ["get_weather", "save_note", "explode", "hang", "add", "slow", "get_location"]
    assert ready["capabilities"]["tools"] is True
    # A server tool: the model calls it, the gateway runs it, the model speaks its result.
    await client.user_message("what is the weather in paris")
    first = await client.collect_reply(timeout=30)
    assert [m["status"] for m in first.tool_statuses] == ["running", "done"]
    assert first.tool_statuses[0]["name"] == "get_weather"
    assert '"sky":"sunny"' in first.assistant_text and '"temperature":21' in first.assistant_text
    # A client tool: the gateway asks this client, which answers with `tool_result`.
    await client.user_message("where am i")
    second = await client.collect_reply(timeout=30)
    call = next(m for m in client.received if m["type"] == "tool_call")
    assert call["name"] == "get_location" and call["arguments"] == {"precise": True}
    assert [m["status"] for m in second.tool_statuses] == ["running", "done"]
    assert '"city":"Lyon"' in second.assistant_text
    await client.stop()


async def test_parallel_calls_are_answered_together(tools_gateway: Callable[..., Any]) -> None:
    async with tools_gateway() as (gw, sim), client_with_location(gw) as client:
        await client.start()
        await client.user_message("both please")
        reply = await client.collect_reply(timeout=30)
        done = [m["name"] for m in reply.tool_statuses if m["status"] == "done"]
        assert sorted(done) == ["get_location", "get_weather"]
        assert "light rain" in reply.assistant_text and '"city":"Lyon"' in reply.assistant_text
        await client.stop()
    conn = sim.accepted[-1]
    # One response.create for the typed message, one after both outputs: not one per output.
    creates = [e for e in conn.received if e.get("type") == "response.create"]
    assert len(creates) == 2
    assert len(model_outputs(conn)) == 2


async def error_reply(client: VoxgateClient, words: str) -> tuple[dict[str, Any], str]:
    """Say `words`, which make the model call a tool that fails: -> (its error status, the
    answer the model gave after reading the error)."""
    await client.user_message(words)
    reply = await client.collect_reply(timeout=30)
    ended = [m for m in reply.tool_statuses if m["status"] != "running"]
    assert len(ended) == 1, reply.tool_statuses
    return ended[0], reply.assistant_text


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("broken json", "not valid JSON"),
        ("wrong type", "do not match the schema: city"),
        ("invent one", "no tool named 'no_such_tool'"),
        ("explode now", "RuntimeError: the tool exploded: test"),
        ("hang now", "did not answer within 0.5 s"),
        ("locate bad", "do not match the schema: precise"),
    ],
)
async def test_a_failing_call_gives_the_model_an_error_and_the_conversation_goes_on(
    tools_gateway: Callable[..., Any], words: str, expected: str
) -> None:
    async with tools_gateway() as (gw, sim), client_with_location(gw) as client:
        await client.start()
        status, answer = await error_reply(client, words)
        assert status["status"] == "error" and expected in status["error"]
        assert expected in answer  # the model read the error
        # The conversation goes on: the next call works.
        await client.user_message("what is the weather in paris")
        after = await client.collect_reply(timeout=30)
        assert "sunny" in after.assistant_text
        await client.stop()
    assert expected in json.loads(model_outputs(sim.accepted[-1])[0])["error"]
    if words == "locate bad":  # the client never saw a call with bad arguments
        assert not [m for m in client.received if m["type"] == "tool_call"]


async def test_a_client_tool_that_never_answers_times_out(tools_gateway: Callable[..., Any]) -> None:
    async with tools_gateway(tool_timeout_s=0.5) as (gw, _sim):
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(tools=[{"name": "get_location", "parameters": LOCATION}])
            status, answer = await error_reply(client, "where am i")
            assert "did not answer the tool call within 0.5 s" in status["error"]
            # The late answer is discarded with a non-fatal error.
            call = next(m for m in client.received if m["type"] == "tool_call")
            await client.send({"type": "tool_result", "callId": call["callId"], "output": "late"})
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "bad_request" and not error["fatal"]
            assert "failed already" in error["message"]
            await client.user_message("what is the weather in paris")
            assert "sunny" in (await client.collect_reply(timeout=30)).assistant_text


async def test_bad_tool_results_are_refused_and_the_session_goes_on(
    tools_gateway: Callable[..., Any],
) -> None:
    async with tools_gateway(max_frame_bytes=4096) as (gw, sim):
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(tools=[{"name": "get_location", "parameters": LOCATION}])
            # An id that names no call.
            await client.send({"type": "tool_result", "callId": "call_made_up", "output": 1})
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "bad_request" and not error["fatal"]
            assert "no tool call 'call_made_up'" in error["message"]
            # A result larger than the frame limit: the call fails, the session does not.
            await client.user_message("where am i")
            call = await client.wait_for("tool_call", timeout=30)
            await client.send({"type": "tool_result", "callId": call["callId"], "output": "x" * 8000})
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "payload_too_large" and not error["fatal"]
            reply = await client.collect_reply(timeout=30)
            assert "larger than the frame limit of 4096 bytes" in reply.assistant_text
            # An answer to a call answered already.
            await client.send({"type": "tool_result", "callId": call["callId"], "output": "again"})
            error = await client.wait_for("error", timeout=10)
            assert "already" in error["message"] and not error["fatal"]
            # Neither output nor error.
            await client.send({"type": "tool_result", "callId": call["callId"]})
            error = await client.wait_for("error", timeout=10)
            assert "exactly one of 'output' and 'error'" in error["message"]
            await client.user_message("what is the weather in paris")
            assert "sunny" in (await client.collect_reply(timeout=30)).assistant_text
    assert len(model_outputs(sim.accepted[-1])) == 2


async def test_a_client_tool_named_like_a_server_tool_is_refused_at_start(
    tools_gateway: Callable[..., Any],
) -> None:
    async with tools_gateway() as (gw, _sim), VoxgateClient(gw.ws_url) as client:
        await client.send({"type": "start", "tools": [{"name": "get_weather"}]})
        error = await client.wait_for("error", timeout=10)
        assert error["code"] == "bad_request" and not error["fatal"]
        assert "'get_weather' is already a server tool" in error["message"]
        # The client may correct its start.
        ready = await client.start(tools=[{"name": "get_location", "parameters": LOCATION}])
        assert "get_location" in ready["tools"]


async def test_an_interrupt_cancels_pending_calls_and_late_results_are_discarded(
    tools_gateway: Callable[..., Any],
) -> None:
    async with tools_gateway() as (gw, sim), VoxgateClient(gw.ws_url) as client:
        await client.start(tools=[{"name": "get_location", "parameters": LOCATION}])
        await client.user_message("where am i")
        call = await client.wait_for("tool_call", timeout=30)
        await client.interrupt()
        cancelled = await client.wait_for("tool_status", where=lambda m: m["status"] == "cancelled", timeout=10)
        assert cancelled["callId"] == call["callId"]
        await client.send({"type": "tool_result", "callId": call["callId"], "output": "too late"})
        error = await client.wait_for("error", timeout=10)
        assert "was cancelled already" in error["message"] and not error["fatal"]
        await client.user_message("what is the weather in paris")
        assert "sunny" in (await client.collect_reply(timeout=30)).assistant_text
        await client.stop()
    conn = sim.accepted[-1]
    outputs = model_outputs(conn)
    assert "cancelled" not in outputs[0] and "the user interrupted" in json.loads(outputs[0])["error"]
    assert "too late" not in " ".join(outputs)
    # No response was asked for after the cancellation: only after the typed messages and the
    # weather result.
    assert len([e for e in conn.received if e.get("type") == "response.create"]) == 3


async def test_a_reconnect_restores_the_calls(tools_gateway: Callable[..., Any]) -> None:
    async with tools_gateway() as (gw, sim), client_with_location(gw) as client:
        await client.start()
        await client.user_message("what is the weather in paris")
        await client.collect_reply(timeout=30)
        before = len(sim.accepted)
        sim.inject_error("server_error", "simulated drop", close=1011)
        await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=30)
        assert len(sim.accepted) == before + 1
        restored = items_created(sim.accepted[-1])
        call = next(i for i in restored if i["type"] == "function_call")
        output = next(i for i in restored if i["type"] == "function_call_output")
        assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
        assert output["call_id"] == call["call_id"] and "sunny" in output["output"]
        kinds = [i["type"] for i in restored]
        assert kinds.index("function_call") < kinds.index("function_call_output")
        # The conversation goes on with tools on the new upstream.
        await client.user_message("where am i")
        assert "Lyon" in (await client.collect_reply(timeout=30)).assistant_text


async def test_resume_gives_the_calls_back_to_the_model(tools_gateway: Callable[..., Any]) -> None:
    async with tools_gateway() as (gw, sim):
        async with client_with_location(gw) as client:
            ready = await client.start()
            await client.user_message("what is the weather in paris")
            await client.collect_reply(timeout=30)
            await client.stop()
        await gw.wait_idle()
        async with client_with_location(gw) as client:
            await client.start(conversationId=ready["conversationId"])
            restored = items_created(sim.accepted[-1])
            assert [i["type"] for i in restored][:4] == [
                "message", "function_call", "function_call_output", "message",
            ]  # fmt: skip
            assert "sunny" in restored[2]["output"]
            await client.stop()


async def test_tool_metrics(tools_gateway: Callable[..., Any]) -> None:
    async with tools_gateway() as (gw, _sim), client_with_location(gw) as client:
        await client.start()
        await client.user_message("what is the weather in paris")
        await client.collect_reply(timeout=30)
        await client.user_message("explode now")
        await client.collect_reply(timeout=30)
        await client.stop()
        text = gw.state.metrics.prometheus_text().decode()
    assert 'voxgate_tool_calls_total{status="done",tool="get_weather"} 1.0' in text
    assert 'voxgate_tool_calls_total{status="error",tool="explode"} 1.0' in text
    assert 'voxgate_tool_seconds_count{tool="get_weather"} 1.0' in text


async def test_bad_tool_declarations_are_refused_at_start(tools_gateway: Callable[..., Any]) -> None:
    async with tools_gateway() as (gw, _sim), VoxgateClient(gw.ws_url) as client:
        await client.send({"type": "tool_result", "callId": "x", "output": 1})
        assert (await client.wait_for("error", timeout=10))["code"] == "not_started"
        for tools, sentence in [
            ([{"name": "bad name"}], "tools.0.name"),
            ([{"name": "a"}, {"name": "a"}], "the name 'a' is declared twice"),
            ([{"name": "a", "parameters": {"type": "string"}}], "must describe an object"),
            ([{"name": "a", "parameters": {"type": "object", "properties": 3}}], "not a valid JSON Schema"),
        ]:
            await client.send({"type": "start", "tools": tools})
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "bad_request" and not error["fatal"]
            assert sentence in error["message"], error
        ready = await client.start(tools=[{"name": "a"}])
        assert ready["tools"][-1] == "a"


async def test_a_slow_tool_gets_a_filler_and_then_the_answer(tools_gateway: Callable[..., Any]) -> None:
    async with tools_gateway(tool_filler_ms=300) as (gw, sim), VoxgateClient(gw.ws_url) as client:
        await client.start()
        await client.user_message("take your time")
        filler = await client.collect_reply(timeout=30)
        assert filler.assistant_text == "One moment, please." and filler.audio
        answer = await client.collect_reply(timeout=30)
        assert answer.assistant_text == "The tools said: slept 2 s."
        statuses = [m["status"] for m in filler.tool_statuses + answer.tool_statuses]
        assert statuses == ["running", "done"]
        await client.stop()
    conn = sim.accepted[-1]
    oob = [e for e in conn.received if e.get("type") == "response.create" and e.get("response")]
    assert len(oob) == 1 and oob[0]["response"]["conversation"] == "none"
    # The filler joined no conversation: the model's items hold the call, its output, the answer.
    kinds = [(i["type"], i.get("role")) for i in conn.items]
    assert ("message", "assistant") in kinds and len([k for k in kinds if k == ("message", "assistant")]) == 1


async def test_a_quick_tool_gets_no_filler(tools_gateway: Callable[..., Any]) -> None:
    async with tools_gateway(tool_filler_ms=5000) as (gw, sim), VoxgateClient(gw.ws_url) as client:
        await client.start()
        await client.user_message("what is the weather in paris")
        reply = await client.collect_reply(timeout=30)
        assert "sunny" in reply.assistant_text and "One moment" not in reply.assistant_text
        await client.stop()
    assert not [e for e in sim.accepted[-1].received if e.get("type") == "response.create" and e.get("response")]
