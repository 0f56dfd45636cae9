"""The OpenAI Realtime GA simulator behaves like the real service where clients can tell.

Every event it emits is parsed with the official SDK's GA models; the SDK client itself drives
it; handshake rules, error shapes and truncation rules follow OpenAI's GA behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import json
import typing
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection

from voxgate.testing.openai_sim import OpenAISimulator, ToolTrigger
from voxgate.testing.speech import silence, synthesize

KEY = "sk-sim-test-key-123456"
PHRASE = "what is the weather like today"


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(keys={KEY}, pace=8.0, transcript=PHRASE) as s:
        yield s


async def _open(sim: OpenAISimulator, **kw: Any) -> ClientConnection:
    headers = kw.pop("headers", {"Authorization": f"Bearer {KEY}"})
    return await websockets.connect(
        sim.url + "?model=gpt-realtime", additional_headers=headers, open_timeout=5, **kw
    )


async def _recv_until(ws: ClientConnection, etype: str, timeout: float = 20) -> list[dict]:
    """Every event up to and including the first of type `etype`."""
    seen: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            seen.append(event)
            if event["type"] == etype:
                return seen


async def _send(ws: ClientConnection, event: dict) -> None:
    await ws.send(json.dumps(event))


def _speech(text: str = PHRASE) -> bytes:
    return silence(200, 24000) + synthesize(text, 24000) + silence(900, 24000)


async def _append(ws: ClientConnection, pcm: bytes, chunk: int = 4800) -> None:
    for i in range(0, len(pcm), chunk):
        piece = base64.b64encode(pcm[i : i + chunk]).decode()
        await _send(ws, {"type": "input_audio_buffer.append", "audio": piece})


def _event_classes() -> dict[str, type]:
    union = typing.get_args(RealtimeServerEvent)[0]
    classes: dict[str, type] = {}
    for cls in typing.get_args(union):
        for literal in typing.get_args(cls.model_fields["type"].annotation):
            classes[literal] = cls
    return classes


async def test_every_emitted_event_parses_with_sdk_ga_models(sim: OpenAISimulator) -> None:
    ws = await _open(sim)
    await _recv_until(ws, "conversation.created")
    await _send(ws, {"type": "session.update", "session": {
        "type": "realtime", "instructions": "Be brief.",
        "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
    }})  # fmt: skip
    await _recv_until(ws, "session.updated")
    await _append(ws, _speech())  # server VAD turn with transcription and an audio response
    await _recv_until(ws, "response.done")
    await _send(ws, {"type": "conversation.item.create", "item": {"type": "message",
                "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}})  # fmt: skip
    await _send(ws, {"type": "response.create"})
    events = await _recv_until(ws, "response.output_audio.delta")
    item_id = events[-1]["item_id"]
    await _send(ws, {"type": "response.cancel"})
    await _recv_until(ws, "response.done")
    await _send(ws, {"type": "conversation.item.truncate", "item_id": item_id,
                     "content_index": 0, "audio_end_ms": 50})  # fmt: skip
    await _recv_until(ws, "conversation.item.truncated")
    await _send(ws, {"type": "response.cancel"})  # error event
    await _recv_until(ws, "error")
    await _send(ws, {"type": "session.update", "session": {"type": "realtime",
                     "output_modalities": ["text"]}})  # fmt: skip
    await _recv_until(ws, "session.updated")
    await _send(ws, {"type": "response.create"})
    await _recv_until(ws, "response.done")
    await _send(ws, {"type": "input_audio_buffer.clear"})
    await _recv_until(ws, "input_audio_buffer.cleared")
    await ws.close()

    sent = sim.connections[-1].sent
    classes = _event_classes()
    adapter = TypeAdapter(RealtimeServerEvent)
    seen_types = set()
    for event in sent:
        cls = classes.get(event["type"])
        assert cls is not None, f"not a GA server event type: {event['type']}"
        cls.model_validate(event)  # strict per-type parse: required fields and their types
        assert adapter.validate_python(event).type == event["type"]
        seen_types.add(event["type"])
    expected = {
        "session.created", "conversation.created", "session.updated",
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed", "response.created",
        "rate_limits.updated", "response.output_item.added", "response.content_part.added",
        "response.output_audio.delta", "response.output_audio_transcript.delta",
        "response.output_audio.done", "response.output_audio_transcript.done",
        "response.content_part.done", "response.output_item.done", "response.done",
        "conversation.item.truncated", "error", "response.output_text.delta",
        "response.output_text.done", "input_audio_buffer.cleared",
    }  # fmt: skip
    assert expected <= seen_types, expected - seen_types
    # The cancelled response says why.
    done = [e for e in sent if e["type"] == "response.done"]
    assert done[1]["response"]["status"] == "cancelled"
    assert done[1]["response"]["status_details"]["reason"] == "client_cancelled"


async def test_official_sdk_client_round_trip(sim: OpenAISimulator) -> None:
    client = AsyncOpenAI(api_key=KEY, base_url=sim.api_base,
                         websocket_base_url=sim.url.removesuffix("/realtime"))  # fmt: skip
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={
            "type": "realtime", "instructions": "You are a test.",
            "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
        })  # fmt: skip
        types: list[str] = []
        async with asyncio.timeout(20):
            async for event in conn:
                types.append(event.type)
                if event.type == "session.updated":
                    assert event.session.instructions == "You are a test."
                    break
            # A text turn.
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "good morning"}]})  # fmt: skip
            await conn.response.create()
            transcript = ""
            async for event in conn:
                if event.type == "response.output_audio_transcript.done":
                    transcript = event.transcript
                if event.type == "response.done":
                    assert event.response.status == "completed"
                    assert event.response.usage is not None and event.response.usage.total_tokens
                    break
            assert transcript == "You said: good morning."
            # An audio turn (server VAD).
            pcm = _speech()
            for i in range(0, len(pcm), 4800):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(pcm[i : i + 4800]).decode()
                )
            heard = said = ""
            audio = b""
            async for event in conn:
                if event.type == "conversation.item.input_audio_transcription.completed":
                    heard = event.transcript
                elif event.type == "response.output_audio.delta":
                    audio += base64.b64decode(event.delta)
                elif event.type == "response.output_audio_transcript.done":
                    said = event.transcript
                elif event.type == "response.done":
                    break
    assert types[:2] == ["session.created", "conversation.created"]
    assert heard == PHRASE
    assert said == f"You said: {PHRASE}."
    assert audio == synthesize(said, 24000)  # real espeak-ng speech at 24 kHz
    rec = sim.connections[-1]
    assert rec.path == "/v1/realtime" and rec.query == {"model": "gpt-realtime"}
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert "openai-beta" not in rec.headers


async def test_handshake_rejected_without_or_with_wrong_key(sim: OpenAISimulator) -> None:
    for headers, code in (
        ({}, None),
        ({"Authorization": "Bearer sk-wrong-key-0000"}, "invalid_api_key"),
    ):
        with pytest.raises(websockets.InvalidStatus) as info:
            await _open(sim, headers=headers)
        response = info.value.response
        assert response.status_code == 401
        body = json.loads(response.body)
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] == code
        assert "sk-wrong-key-0000" not in response.body.decode()
    assert [c.rejected_status for c in sim.connections] == [401, 401]


@pytest.mark.parametrize("beta", ["header", "subprotocol"])
async def test_beta_clients_get_error_then_close_4000(sim: OpenAISimulator, beta: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    kw: dict[str, Any] = {}
    if beta == "header":
        headers["OpenAI-Beta"] = "realtime=v1"
    else:
        kw["subprotocols"] = ["realtime", "openai-beta.realtime-v1"]
    ws = await _open(sim, headers=headers, **kw)
    event = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert event["type"] == "error"
    assert event["error"]["code"] == "beta_api_shape_disabled"
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 4000
    assert ws.close_reason == "invalid_request_error.beta_api_shape_disabled"


async def test_browser_subprotocol_auth_selects_realtime(sim: OpenAISimulator) -> None:
    ws = await _open(sim, headers={},
                     subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"])  # fmt: skip
    assert ws.subprotocol == "realtime"
    assert (await _recv_until(ws, "session.created"))[0]["session"]["type"] == "realtime"
    await ws.close()


async def test_invalid_events_get_error_events_and_socket_stays_open(sim: OpenAISimulator) -> None:
    ws = await _open(sim)
    await _recv_until(ws, "conversation.created")
    cases: list[tuple[str, str, str | None]] = [
        ("{not json", "invalid_json", None),
        (json.dumps({"type": "response.frobnicate", "event_id": "c1"}), "invalid_value", "type"),
        (json.dumps({"no": "type"}), "missing_required_parameter", "type"),
        (
            json.dumps(
                {"type": "conversation.item.truncate", "content_index": 0, "audio_end_ms": 5}
            ),
            "missing_required_parameter",
            "item_id",
        ),  # fmt: skip
        (
            json.dumps({"type": "session.update", "session": {"instructions": "x"}}),
            "missing_required_parameter",
            "session.type",
        ),  # fmt: skip
        (
            json.dumps(
                {
                    "type": "session.update",
                    "event_id": "c2",
                    "session": {"type": "realtime", "temperature": 0.8},
                }
            ),
            "unknown_parameter",
            "session.temperature",
        ),  # fmt: skip
        (
            json.dumps({"type": "input_audio_buffer.commit"}),
            "input_audio_buffer_commit_empty",
            None,
        ),
        (json.dumps({"type": "response.cancel"}), "response_cancel_not_active", None),
    ]
    for frame, code, param in cases:
        await ws.send(frame)
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["type"] == "error", frame
        err = event["error"]
        assert set(err) == {"type", "code", "message", "param", "event_id"}
        assert err["type"] == "invalid_request_error"
        assert (err["code"], err["param"]) == (code, param), frame
        assert err["message"]
        sent = json.loads(frame) if frame.startswith('{"') else {}
        assert err["event_id"] == sent.get("event_id")
    # Still open and working.
    await _send(
        ws, {"type": "session.update", "session": {"type": "realtime", "instructions": "ok"}}
    )
    updated = await _recv_until(ws, "session.updated", 5)
    assert updated[-1]["session"]["instructions"] == "ok"
    await ws.close()


async def test_truncate_rules_and_one_active_response(sim: OpenAISimulator) -> None:
    ws = await _open(sim)
    await _recv_until(ws, "conversation.created")
    await _send(ws, {"type": "conversation.item.create", "item": {"id": "item_user1", "type": "message",
                "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})  # fmt: skip
    await _send(ws, {"type": "response.create"})
    await _send(ws, {"type": "response.create"})
    events = await _recv_until(ws, "error")
    assert events[-1]["error"]["code"] == "conversation_already_has_active_response"
    events = await _recv_until(ws, "response.done")
    item = events[-1]["response"]["output"][0]
    audio_ms = sum(
        len(base64.b64decode(e["delta"])) // 48
        for e in sim.connections[-1].sent
        if e["type"] == "response.output_audio.delta"
    )
    await _send(ws, {"type": "conversation.item.truncate", "item_id": item["id"],
                     "content_index": 0, "audio_end_ms": audio_ms + 1})  # fmt: skip
    err = (await _recv_until(ws, "error"))[-1]["error"]
    assert (err["code"], err["param"]) == ("invalid_value", "audio_end_ms")
    await _send(ws, {"type": "conversation.item.truncate", "item_id": "item_user1",
                     "content_index": 0, "audio_end_ms": 0})  # fmt: skip
    assert (await _recv_until(ws, "error"))[-1]["error"]["param"] == "item_id"
    await _send(ws, {"type": "conversation.item.truncate", "item_id": item["id"],
                     "content_index": 0, "audio_end_ms": audio_ms})  # fmt: skip
    truncated = (await _recv_until(ws, "conversation.item.truncated"))[-1]
    assert truncated["audio_end_ms"] == audio_ms
    await ws.close()


async def test_client_secret_mints_a_working_ephemeral_key(sim: OpenAISimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.api_base, timeout=10) as http:
        denied = await http.post("/realtime/client_secrets", json={})
        assert denied.status_code == 401
        resp = await http.post(
            "/realtime/client_secrets",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"expires_after": {"anchor": "created_at", "seconds": 120},
                  "session": {"type": "realtime", "audio": {"output": {"voice": "marin"}}}},
        )  # fmt: skip
        assert resp.status_code == 200
        secret = resp.json()
        bad = await http.post("/realtime/client_secrets", headers={"Authorization": f"Bearer {KEY}"},
                              json={"expires_after": {"seconds": 5}})  # fmt: skip
        assert bad.status_code == 400
    assert secret["value"].startswith("ek_") and isinstance(secret["expires_at"], int)
    assert secret["session"]["audio"]["output"]["voice"] == "marin"
    ws = await _open(sim, headers={},
                     subprotocols=["realtime", f"openai-insecure-api-key.{secret['value']}"])  # fmt: skip
    assert (await _recv_until(ws, "session.created"))[0]["type"] == "session.created"
    await ws.close()


async def test_fault_control_endpoint_refuses_handshakes(sim: OpenAISimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.api_base.removesuffix("/v1"), timeout=10) as http:
        assert (
            await http.post("/_sim/faults", json={"refuse_next": 1, "refuse_status": 500})
        ).status_code == 200
        with pytest.raises(websockets.InvalidStatus) as info:
            await _open(sim)
        assert info.value.response.status_code == 500
        await http.post("/_sim/faults", json={"refuse_status": None})
        ws = await _open(sim)
        await _recv_until(ws, "session.created")
        await ws.close()
        assert (await http.post("/_sim/faults", json={"nonsense": 1})).status_code == 400


async def test_pocketsphinx_transcription_with_a_grammar(tmp_path: Any) -> None:
    grammar = tmp_path / "phrases.jsgf"
    grammar.write_text(
        "#JSGF V1.0;\ngrammar phrases;\n"
        "public <phrase> = what is the weather like today | tell me a joke | good morning;\n"
    )
    async with OpenAISimulator(
        keys={KEY}, pace=8.0, pocketsphinx=True, grammar=str(grammar)
    ) as sim:
        ws = await _open(sim)
        await _recv_until(ws, "conversation.created")
        await _send(ws, {"type": "session.update", "session": {"type": "realtime",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}}}})  # fmt: skip
        # Long leading silence: the committed item starts at speech start minus the prefix
        # padding, as on the service, so the recogniser does not see two seconds of nothing.
        await _append(ws, silence(2000, 24000) + _speech("tell me a joke"))
        events = await _recv_until(ws, "response.output_audio_transcript.done")
        await ws.close()
    completed = [e for e in events if e["type"].endswith("input_audio_transcription.completed")]
    assert completed[0]["transcript"] == "tell me a joke"
    assert events[-1]["transcript"] == "You said: tell me a joke."


async def test_server_vad_honours_threshold_and_create_response(sim: OpenAISimulator) -> None:
    import numpy as np

    ws = await _open(sim)
    await _recv_until(ws, "conversation.created")
    await _send(ws, {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "threshold": 0.9, "create_response": False}}}}})  # fmt: skip
    updated = (await _recv_until(ws, "session.updated"))[-1]["session"]
    assert (
        updated["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
    )  # defaults kept
    loud = _speech()
    quiet = (np.frombuffer(loud, dtype="<i2") // 10).astype("<i2").tobytes()  # -20 dB
    await _append(ws, quiet)
    await _send(ws, {"type": "input_audio_buffer.clear"})
    events = await _recv_until(ws, "input_audio_buffer.cleared")
    assert [e["type"] for e in events] == ["input_audio_buffer.cleared"]  # below threshold
    await _append(ws, loud)
    events = await _recv_until(ws, "conversation.item.done")
    started = events[0]
    assert started["type"] == "input_audio_buffer.speech_started"
    # Speech begins 200 ms into this audio, which follows the quiet clip; prefix padding is 300 ms.
    begin_ms = len(quiet) // 48 + 200
    assert begin_ms - 300 - 30 <= started["audio_start_ms"] <= begin_ms - 300 + 60
    await _send(ws, {"type": "input_audio_buffer.clear"})
    events = await _recv_until(ws, "input_audio_buffer.cleared")
    assert "response.created" not in [e["type"] for e in events]  # create_response: false
    await ws.close()


async def test_function_calls_on_a_scripted_trigger_parse_with_sdk_models() -> None:
    weather = {"type": "function", "name": "get_weather", "description": "Weather.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
    clock = {**weather, "name": "get_time", "description": "Time."}
    triggers = [
        ToolTrigger.one("weather", "get_weather", {"city": "Paris"}),
        ToolTrigger("both", (("get_weather", {"city": "Oslo"}), ("get_time", {}))),
        ToolTrigger.one("undeclared", "not_declared", {}),
    ]
    async with OpenAISimulator(keys={KEY}, pace=8.0, tool_triggers=triggers) as sim:
        ws = await _open(sim)
        await _recv_until(ws, "conversation.created")
        await _send(ws, {"type": "session.update",
                         "session": {"type": "realtime", "tools": [weather, clock]}})  # fmt: skip
        await _recv_until(ws, "session.updated")

        async def say(text: str) -> list[dict]:
            await _send(ws, {"type": "conversation.item.create", "item": {"type": "message",
                        "role": "user", "content": [{"type": "input_text", "text": text}]}})  # fmt: skip
            await _send(ws, {"type": "response.create"})
            return await _recv_until(ws, "response.done")

        events = await say("what is the weather")
        done = events[-1]["response"]
        assert done["status"] == "completed" and len(done["output"]) == 1
        call = done["output"][0]
        assert call["type"] == "function_call" and call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "Paris"}
        arguments = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
        assert "".join(e["delta"] for e in arguments) == call["arguments"]
        # An output for a call the conversation does not hold is refused.
        await _send(ws, {"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": "call_unknown", "output": "x"}})  # fmt: skip
        error = (await _recv_until(ws, "error"))[-1]
        assert error["error"]["param"] == "item.call_id"
        await _send(ws, {"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}})  # fmt: skip
        await _send(ws, {"type": "response.create"})
        spoken = (await _recv_until(ws, "response.output_audio_transcript.done"))[-1]
        assert spoken["transcript"] == "The tools said: sunny."
        await _recv_until(ws, "response.done")
        # Parallel calls: two function_call items in one response.
        done = (await say("both"))[-1]["response"]
        assert [o["name"] for o in done["output"]] == ["get_weather", "get_time"]
        # A tool the session did not declare is not called (the trigger says it may not).
        done = (await say("undeclared"))[-1]["response"]
        assert [o["type"] for o in done["output"]] == ["message"]
        # An out-of-band response says what it is told and joins no conversation.
        held = len(sim.connections[-1].items)
        await _send(ws, {"type": "response.create", "response": {"conversation": "none",
                         "instructions": "Say this, and nothing else: One moment."}})  # fmt: skip
        spoken = (await _recv_until(ws, "response.output_audio_transcript.done"))[-1]
        assert spoken["transcript"] == "One moment."
        await _recv_until(ws, "response.done")
        assert len(sim.connections[-1].items) == held
        await ws.close()

    classes = _event_classes()
    for event in sim.connections[-1].sent:
        classes[event["type"]].model_validate(event)
    sent = {e["type"] for e in sim.connections[-1].sent}
    assert {"response.function_call_arguments.delta", "response.function_call_arguments.done"} <= sent
