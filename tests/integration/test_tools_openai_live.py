"""Tools on the `openai-live` engine: GPT-Live's Responses delegation through the gateway (server
tools, client tools over the protocol, parallel calls, a tool that raises, a tool name the
backend invents, an interrupt, a failed backend response, calls restored after a reconnect and
on resume), and the simulator refusing what the real
service refuses (a partial batch, an output for no call, `response.*` in client mode, unknown
delegation fields, a delegation type changed mid-session).

The simulator's backend calls functions on scripted triggers (`ToolTrigger`) and its voice
model speaks what the backend made of the outputs ("The tools said: …"), so an answer that
quotes a tool's result proves the result reached the model. Every event it sends validates
against the official SDK's models, the nested backend events against the Responses stream
models.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai.types.live.server_event import ServerEvent
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from voxgate.client import Reply, VoxgateClient
from voxgate.engines.openai_live.engine import OpenAILiveEngine
from voxgate.testing.openai_live_sim import LiveConnection, OpenAILiveSimulator
from voxgate.testing.speech import silence, synthesize
from voxgate.testing.tooling import ToolTrigger

KEY = "sk-live-tools-key-0123456789"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tools"
LOCATION = {"type": "object", "properties": {"precise": {"type": "boolean"}}}
TRIGGERS = [
    ToolTrigger.one("weather in paris", "get_weather", {"city": "Paris"}),
    ToolTrigger.one("where am i", "get_location", {"precise": True}),
    ToolTrigger("both please", (("get_weather", {"city": "London"}), ("get_location", {"precise": False}))),
    ToolTrigger.one("invent one", "no_such_tool", {}, undeclared=True),
    ToolTrigger.one("explode now", "explode", {"reason": "test"}),
    ToolTrigger.one("take your time", "slow", {"seconds": 20}),
]
SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(ServerEvent)
BACKEND_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(autouse=True)
def _setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(OpenAILiveEngine, "timeline_pace", 4.0)


@pytest.fixture
def live_gateway(make_settings: Callable[..., Any], gateway_factory: Callable[..., Any]) -> Callable[..., Any]:
    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[tuple[Any, OpenAILiveSimulator]]:
        overrides.setdefault("tool_filler_ms", 0)
        async with OpenAILiveSimulator(keys=[KEY], tool_triggers=TRIGGERS, transcript="what is the weather in paris") as sim:
            settings = make_settings(
                engine="openai-live", openai_api_key=KEY, openai_live_url=sim.url,
                tools=["weather_tools", "tests.support.tools_faulty"],
                reconnect_base_s=0.05, reconnect_max_s=0.2, **overrides,
            )  # fmt: skip
            async with gateway_factory(settings) as gw:
                yield gw, sim

    return run


def validate_all(conn: LiveConnection) -> None:
    """Every event the simulator sent is a valid SDK `ServerEvent`; every nested backend event
    a valid Responses stream event."""
    for event in conn.sent:
        assert SERVER_EVENT.validate_python(event).type == event["type"]
        if event["type"] == "response.event":
            assert BACKEND_EVENT.validate_python(event["event"]).type == event["event"]["type"]


def received(conn: LiveConnection, etype: str) -> list[dict[str, Any]]:
    return [e for e in conn.received if isinstance(e, dict) and e.get("type") == etype]


def backend_types(conn: LiveConnection) -> list[str]:
    """What the client sent back to the backend, in order."""
    return [e["type"] for e in conn.received if isinstance(e, dict) and e.get("type", "").startswith("response.")]


async def answer_with(client: VoxgateClient, needle: str, turns: int = 4) -> Reply:
    """The assistant turn that contains `needle` (GPT-Live says "let me check" first)."""
    seen = []
    for _ in range(turns):
        reply = await client.collect_reply(timeout=30)
        seen.append(reply)
        if needle in reply.assistant_text:
            return reply
    raise AssertionError(f"no answer with {needle!r}: {[r.assistant_text for r in seen]}")


def located(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"city": "Lyon", "precise": arguments.get("precise", False)}


def client_with_location(gw: Any) -> VoxgateClient:
    client = VoxgateClient(gw.ws_url)
    client.register_tool("get_location", located, description="Where the user is.", parameters=LOCATION)
    return client


async def test_a_spoken_turn_calls_a_server_tool_through_the_backend(live_gateway, make_settings) -> None:
    async with live_gateway() as (gw, sim), client_with_location(gw) as client:
        ready = await client.start()
        assert ready["capabilities"]["tools"] is True
        rate = client.input_rate
        await client.stream_audio(
            silence(200, rate) + synthesize("what is the weather in paris", rate) + silence(900, rate), speed=4.0
        )
        reply = await answer_with(client, "The tools said")
        assert '"sky":"sunny"' in reply.assistant_text and reply.audio
        statuses = [m for m in client.received if m["type"] == "tool_status"]
        assert [(m["name"], m["status"]) for m in statuses] == [("get_weather", "running"), ("get_weather", "done")]
    conn = sim.accepted[-1]
    start = received(conn, "session.start")[0]["session"]
    delegation = start["delegation"]
    assert delegation["type"] == "responses"
    backend = delegation["responses"]
    assert backend["model"] == make_settings().openai_live_tools_model and backend["parallel_tool_calls"] is True
    declared = {t["name"]: t for t in backend["tools"]}
    assert set(declared) == {"get_weather", "save_note", "explode", "hang", "add", "slow", "get_location"}
    assert declared["get_location"] == {"type": "function", "name": "get_location",
                                        "description": "Where the user is.", "parameters": LOCATION}  # fmt: skip
    assert declared["get_weather"]["parameters"]["required"] == ["city"]
    # The output went back for the call the backend made, then one response.create.
    created = next(e for e in conn.sent if e["type"] == "session.delegation.created")
    assert created["delegation"]["target"] == "responses" and created["delegation"]["response_id"]
    call = next(e["event"]["item"] for e in conn.sent
                if e["type"] == "response.event" and e["event"]["type"] == "response.output_item.done")  # fmt: skip
    outputs = [e["item"] for e in received(conn, "response.item.create")]
    assert [o["call_id"] for o in outputs] == [call["call_id"]]
    assert json.loads(outputs[0]["output"]) == {"city": "Paris", "sky": "sunny", "temperature": 21, "unit": "celsius"}
    assert backend_types(conn) == ["response.item.create", "response.create"]
    assert not received(conn, "session.commentary.append")  # no "no tools" answer
    assert not [e for e in conn.sent if e["type"] == "error"]
    validate_all(conn)


async def test_a_client_tool_and_two_calls_in_parallel(live_gateway) -> None:
    async with live_gateway() as (gw, sim), client_with_location(gw) as client:
        await client.start()
        await client.user_message("where am i")
        reply = await answer_with(client, "The tools said")
        call = next(m for m in client.received if m["type"] == "tool_call")
        assert call["name"] == "get_location" and call["arguments"] == {"precise": True}
        assert '"city":"Lyon"' in reply.assistant_text
        # Two calls in one backend response: both outputs, then one response.create.
        await client.user_message("both please")
        both = await answer_with(client, "light rain")
        assert '"precise":false' in both.assistant_text
    conn = sim.accepted[-1]
    assert backend_types(conn) == ["response.item.create", "response.create"] + [
        "response.item.create", "response.item.create", "response.create"
    ]
    names = [e["event"]["item"]["name"] for e in conn.sent if e["type"] == "response.event"
             and e["event"]["type"] == "response.output_item.done" and e["event"]["item"]["type"] == "function_call"]  # fmt: skip
    assert names == ["get_location", "get_weather", "get_location"]
    assert not [e for e in conn.sent if e["type"] == "error"]
    validate_all(conn)


async def test_a_tool_that_raises_and_a_tool_the_backend_invents_get_error_outputs(live_gateway) -> None:
    async with live_gateway() as (gw, sim), VoxgateClient(gw.ws_url) as client:
        await client.start()
        await client.user_message("explode now")
        failed = await answer_with(client, "The tools said")
        assert "the tool exploded: test" in failed.assistant_text
        status = [m for m in client.received if m["type"] == "tool_status"][-1]
        assert status["name"] == "explode" and status["status"] == "error"
        await client.user_message("invent one")
        unknown = await answer_with(client, "The tools said")
        assert "no tool named 'no_such_tool'" in unknown.assistant_text
        # The conversation goes on.
        await client.user_message("thanks")
        after = await answer_with(client, "You said: thanks.")
        assert after.response_status == "completed"
    conn = sim.accepted[-1]
    assert backend_types(conn).count("response.create") == 2
    assert not [e for e in conn.sent if e["type"] == "error"]


async def test_calls_are_restored_as_context_after_a_reconnect(live_gateway) -> None:
    async with live_gateway() as (gw, sim), VoxgateClient(gw.ws_url) as client:
        await client.start()
        await client.user_message("what is the weather in paris")
        await answer_with(client, "The tools said")
        sim.drop_connections(0)  # no session.closed: the engine reconnects
        await client.wait_for("status", where=lambda m: m["status"] == "reconnecting", timeout=15)
        await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=20)
        await client.user_message("thanks")
        await answer_with(client, "You said: thanks.")
    assert len(sim.accepted) == 2
    start = received(sim.accepted[1], "session.start")[0]["session"]
    assert start["delegation"]["type"] == "responses"
    notes = [i["content"][0]["text"] for i in start["input"] if i["role"] == "developer"]
    assert any("get_weather" in n and '{"city":"Paris"}' in n and '"sky":"sunny"' in n for n in notes), notes


async def test_an_interrupt_cancels_the_call_and_the_backend_still_gets_its_output(live_gateway) -> None:
    """GPT-Live's delegated work survives an interrupt: the cancelled call is answered anyway,
    or its backend response would wait for ever."""
    async with live_gateway() as (gw, sim), VoxgateClient(gw.ws_url) as client:
        await client.start()
        await client.user_message("take your time")
        running = await client.wait_for("tool_status", where=lambda m: m["status"] == "running", timeout=30)
        await client.interrupt()
        cancelled = await client.wait_for("tool_status", where=lambda m: m["status"] == "cancelled", timeout=10)
        assert cancelled["callId"] == running["callId"]
        conn = sim.accepted[-1]
        async with asyncio.timeout(30):
            while "response.create" not in backend_types(conn):
                await asyncio.sleep(0.02)
        output = received(conn, "response.item.create")[0]["item"]
        assert output["call_id"] == running["callId"]
        assert "the user interrupted" in json.loads(output["output"])["error"]
        # The conversation goes on.
        await client.user_message("thanks")
        await answer_with(client, "You said: thanks.")
    assert backend_types(sim.accepted[-1]) == ["response.item.create", "response.create"]


async def test_the_calls_of_a_failed_backend_response_are_not_answered(live_gateway) -> None:
    async with live_gateway() as (gw, sim), VoxgateClient(gw.ws_url) as client:
        sim.faults.backend_fails = True
        await client.start()
        await client.user_message("what is the weather in paris")
        error = await client.wait_for("error", timeout=30)
        assert error["code"] == "upstream_error" and not error["fatal"]
        assert "tool backend failed: The backend model failed." in error["message"]
        sim.faults.backend_fails = False
        await client.user_message("thanks")
        await answer_with(client, "You said: thanks.")
        # The tool ran all the same (its status may come before or after the error).
        def done(m: dict[str, Any]) -> bool:
            return m["type"] == "tool_status" and m["status"] == "done"

        if not any(done(m) for m in client.received):
            await client.wait_for("tool_status", where=lambda m: done(m), timeout=30)
    conn = sim.accepted[-1]
    # GPT-Live refuses a failed response's outputs: none were sent, and no error came back.
    assert backend_types(conn) == []
    assert not [e for e in conn.sent if e["type"] == "error"]
    validate_all(conn)


async def test_resume_gives_the_calls_back_as_context(live_gateway) -> None:
    async with live_gateway() as (gw, sim):
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start()
            await client.user_message("what is the weather in paris")
            await answer_with(client, "The tools said")
            await client.stop()
        await gw.wait_idle()
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(conversationId=ready["conversationId"])
            await client.stop()
    start = received(sim.accepted[-1], "session.start")[0]["session"]
    roles = [i["role"] for i in start["input"]]
    notes = [i["content"][0]["text"] for i in start["input"] if i["role"] == "developer"]
    assert roles[0] == "user" and "developer" in roles
    assert any("get_weather" in n and '"sky":"sunny"' in n for n in notes), notes


async def test_a_session_without_tools_keeps_client_delegation(make_settings, gateway_factory) -> None:
    said = "what is the weather in paris"
    async with OpenAILiveSimulator(keys=[KEY], tool_triggers=TRIGGERS, delegate_on=["weather"], transcript=said) as sim:
        settings = make_settings(engine="openai-live", openai_api_key=KEY, openai_live_url=sim.url)
        async with gateway_factory(settings) as gw, VoxgateClient(gw.ws_url) as client:
            ready = await client.start()
            assert ready["tools"] == []
            rate = client.input_rate
            await client.stream_audio(silence(200, rate) + synthesize(said, rate) + silence(900, rate), speed=4.0)
            await answer_with(client, "no tools")
    conn = sim.accepted[-1]
    assert "delegation" not in received(conn, "session.start")[0]["session"]
    assert not backend_types(conn)


# --- the simulator refuses what GPT-Live refuses -----------------------------------------------


def sdk(sim: OpenAILiveSimulator) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=KEY, base_url=sim.base_url, max_retries=0)


async def until(conn: Any, etype: str, where: Callable[[Any], bool] = lambda e: True) -> list[Any]:
    seen = []
    async for event in conn:
        seen.append(event)
        if event.type == etype and where(event):
            return seen
    raise AssertionError(f"the connection ended before {etype}; got {[e.type for e in seen]}")


RESPONSES = {
    "type": "responses",
    "responses": {"model": "gpt-5-mini", "parallel_tool_calls": True, "tools": [
        {"type": "function", "name": "get_weather", "description": "Weather.", "parameters": {"type": "object"}},
        {"type": "function", "name": "get_location", "parameters": {"type": "object"}},
    ]},
}  # fmt: skip


async def test_the_simulator_refuses_a_partial_batch_and_an_unknown_call_id() -> None:
    async with OpenAILiveSimulator(keys=[KEY], tool_triggers=TRIGGERS, transcript="both please") as sim:
        async with asyncio.timeout(60), sdk(sim).live.connect() as conn:
            await conn.session.start(session={"model": "gpt-live-1", "delegation": RESPONSES})
            started = (await until(conn, "session.started"))[-1]
            assert started.session.delegation.type == "responses"
            audio = silence(200, 24000) + synthesize("both please", 24000) + silence(900, 24000)
            for i in range(0, len(audio), 4800):
                await conn.session.input_audio.append(audio=_b64(audio[i : i + 4800]))
            events = await until(conn, "response.event", lambda e: e.event["type"] == "response.completed")
            created = next(e for e in events if e.type == "session.delegation.created")
            assert created.delegation.target == "responses" and created.delegation.response_id
            calls = [e.event["item"] for e in events if e.type == "response.event"
                     and e.event["type"] == "response.output_item.done"]  # fmt: skip
            assert [c["name"] for c in calls] == ["get_weather", "get_location"]
            assert all(e.delegation_id == created.delegation.id for e in events if e.type == "response.event")
            # An output for a call that does not exist.
            await conn.response.item.create(
                item={"type": "function_call_output", "call_id": "call_nope", "output": "x"}, event_id="evt_bad"
            )
            bad = (await until(conn, "error"))[-1]
            assert bad.error.client_event_id == "evt_bad" and "call_nope" in bad.error.message
            # One of two outputs, then response.create: a partial batch.
            await conn.response.item.create(
                item={"type": "function_call_output", "call_id": calls[0]["call_id"], "output": "rain"}
            )
            await conn.response.create(event_id="evt_early")
            early = (await until(conn, "error"))[-1]
            assert early.error.code == "function_call_outputs_required" and early.error.client_event_id == "evt_early"
            # The whole batch: the backend answers and the voice model says it.
            await conn.response.item.create(
                item={"type": "function_call_output", "call_id": calls[1]["call_id"], "output": "Lyon"}
            )
            await conn.response.create()
            done = await until(conn, "response.event", lambda e: e.event["type"] == "response.completed")
            text = next(e.event["text"] for e in done if e.type == "response.event"
                        and e.event["type"] == "response.output_text.done")  # fmt: skip
            assert text == "The tools said: rain; Lyon."

            def spoken() -> str:
                sent = sim.accepted[-1].sent
                return "".join(e["delta"] for e in sent if e["type"] == "session.output_transcript.delta")

            while "The tools said: rain; Lyon." not in spoken():  # the timeline moves on; the model speaks
                await conn.session.input_audio.append(audio=_b64(silence(200, 24000)))
                await asyncio.sleep(0.02)
        validate_all(sim.accepted[-1])


async def test_the_simulator_checks_the_delegation_config_and_client_mode() -> None:
    async with OpenAILiveSimulator(keys=[KEY]) as sim:
        async with sdk(sim).live.connect() as conn:
            bad = {"type": "responses", "responses": {"model": "gpt-5-mini", "temperature": 0.2}}
            await conn.session.start(session={"model": "gpt-live-1", "delegation": bad}, event_id="evt_1")
            error = (await until(conn, "error"))[-1].error
            assert error.code == "unknown_parameter" and error.param == "session.delegation.responses.temperature"
            await conn.session.start(session={"model": "gpt-live-1", "delegation": {"type": "responses"}})
            error = (await until(conn, "error"))[-1].error
            assert error.code == "missing_required_parameter" and error.param == "session.delegation.responses"
            tool = {"type": "function", "name": "x", "returns": "string"}
            await conn.session.start(session={"model": "gpt-live-1", "delegation": {
                "type": "responses", "responses": {"model": "gpt-5-mini", "tools": [tool]}}})  # fmt: skip
            error = (await until(conn, "error"))[-1].error
            assert error.code == "unknown_parameter" and error.param == "session.delegation.responses.tools[0].returns"
            await conn.session.start(session={"model": "gpt-live-1"})
            await until(conn, "session.started")
            # Client delegation: the backend commands are refused.
            await conn.response.item.create(item={"type": "function_call_output", "call_id": "c", "output": "x"})
            assert "Responses delegation" in (await until(conn, "error"))[-1].error.message
            await conn.response.create()
            assert "Responses delegation" in (await until(conn, "error"))[-1].error.message
            # The type is immutable; the backend of a responses session is not.
            await conn.session.update(session={"delegation": RESPONSES})
            assert (await until(conn, "error"))[-1].error.code == "immutable_field_update"
        async with sdk(sim).live.connect() as conn:
            await conn.session.start(session={"model": "gpt-live-1", "delegation": RESPONSES})
            await until(conn, "session.started")
            await conn.session.update(session={"delegation": {**RESPONSES, "responses": {"model": "gpt-5"}}})
            assert (await until(conn, "session.updated"))[-1].session.delegation.responses.model == "gpt-5"
            await conn.session.update(session={"delegation": None})
            assert (await until(conn, "error"))[-1].error.code == "immutable_field_update"
        validate_all(sim.accepted[-1])


def _b64(pcm: bytes) -> str:
    import base64

    return base64.b64encode(pcm).decode()
