"""What the OpenAI-compatible surface may spend on the operator's key, and how its relay reads
what it forwards: the engine choice, the model allowlist, size caps, secret lifetimes, one
credential budget, duplicate-key frames and appends without audio.

Every refusal is sent by a real client over a real socket; the simulator's record shows what
reached the provider (nothing, for a refusal).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from voxgate.config import Settings
from voxgate.testing.gateway import GatewayHandle
from voxgate.testing.openai_sim import OpenAISimulator

KEY = "sk-spending-test-key-0123456789"
SECRET = "spending-test-jwt-secret-0123456789abcdef"


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(keys={KEY}, pace=8.0) as s:
        yield s


def _settings(make_settings: Callable[..., Settings], sim: OpenAISimulator, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "engine": "openai",
        "openai_api_key": KEY,
        "openai_url": sim.url,
        "openai_api_base": sim.api_base,
    }
    base.update(kw)
    return make_settings(**base)


async def _open(gw: GatewayHandle, model: str = "gpt-realtime", **kw: Any) -> ClientConnection:
    return await websockets.connect(
        f"ws://127.0.0.1:{gw.port}/v1/realtime?model={model}", open_timeout=10, **kw
    )


async def _next(ws: ClientConnection, etype: str, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == etype:
                return event


async def _refused(ws: ClientConnection) -> tuple[dict[str, Any], int | None]:
    error = await _next(ws, "error")
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    return error, ws.close_code


def _bearer(gw: GatewayHandle, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.state.authenticator.mint_jwt(user)}"}


async def test_compatible_endpoints_are_closed_unless_the_operator_enabled_openai(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    # The cascade with OpenAI speech: the key is there, but only for the cascade.
    settings = _settings(
        make_settings, sim, engine="cascade", stt="openai", auth="jwt", jwt_secret=SECRET
    )
    async with gateway_factory(settings) as gw:
        ws = await _open(gw, additional_headers=_bearer(gw, "alice"))
        error, code = await _refused(ws)
        assert (error["error"]["code"], code) == ("engine_not_enabled", 4503)
        assert "VOXGATE_ALLOWED_ENGINES" in error["error"]["message"]
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
            secret = await http.post(
                "/v1/realtime/client_secrets", json={}, headers=_bearer(gw, "alice")
            )
            assert secret.status_code == 403
            assert secret.json()["error"]["code"] == "engine_not_enabled"
            # The same refusal the token endpoint gives for a direct OpenAI secret.
            direct = await http.post(
                "/api/realtime/session", json={"direct": "openai"}, headers=_bearer(gw, "alice")
            )
            assert direct.status_code == 403 and "not enabled" in direct.json()["detail"]
        assert gw.state.limiter.total == 0
    assert sim.connections == [] and not sim.ephemeral
    # Listed in VOXGATE_ALLOWED_ENGINES: open.
    async with gateway_factory(_settings(make_settings, sim, engine="cascade", allowed_engines=["openai"])) as gw:
        ws = await _open(gw)
        assert (await _next(ws, "session.created"))["type"] == "session.created"
        await ws.close()


async def test_models_instructions_and_tools_are_bounded_and_refusals_never_forwarded(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    settings = _settings(make_settings, sim, max_tools=4, max_instructions_chars=1000)
    async with gateway_factory(settings) as gw:
        # A model the operator never allowed: refused at the handshake, nothing dialled.
        ws = await _open(gw, model="gpt-4o-realtime-preview")
        error, code = await _refused(ws)
        assert (error["error"]["code"], code) == ("model_not_allowed", 4000)
        assert "gpt-realtime" in error["error"]["message"]
        assert sim.connections == []

        ws = await _open(gw)
        try:
            await _next(ws, "session.created")
            tool = {"type": "function", "name": "f", "description": "", "parameters": {}}
            refusals = [
                ({"model": "gpt-4o-realtime-preview"}, "model_not_allowed", "session.model"),
                ({"instructions": "x" * 200_000}, "instructions_too_long", "session.instructions"),
                ({"tools": [tool] * 5}, "too_many_tools", "session.tools"),
                ({"audio": {"input": {"transcription": {"model": "whisper-2"}}}},
                 "model_not_allowed", "session.audio.input.transcription.model"),
            ]  # fmt: skip
            for i, (fields, code_, param) in enumerate(refusals):
                await ws.send(json.dumps({"type": "session.update", "event_id": f"e{i}",
                                          "session": {"type": "realtime", **fields}}))  # fmt: skip
                error = (await _next(ws, "error"))["error"]
                assert (error["code"], error["param"], error["event_id"]) == (code_, param, f"e{i}")
            await ws.send(json.dumps({"type": "response.create", "response": {"tools": [tool] * 5}}))
            assert (await _next(ws, "error"))["error"]["param"] == "response.tools"
            # The session survives, and a request within bounds goes through.
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "instructions": "Be brief.", "tools": [tool] * 4}}))  # fmt: skip
            updated = await _next(ws, "session.updated")
            assert updated["session"]["instructions"] == "Be brief."
        finally:
            await ws.close()
    received = sim.connections[-1].received
    assert [e["type"] for e in received] == ["session.update"]  # only the one within bounds


async def test_client_secrets_are_bounded_counted_and_share_one_budget(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    settings = _settings(
        make_settings, sim, auth="jwt", jwt_secret=SECRET, max_sessions_per_user=2,
        token_requests_per_min=6, client_secret_max_ttl_s=300,
    )  # fmt: skip
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        alice = _bearer(gw, "alice")

        async def secret(body: dict[str, Any], auth: dict[str, str] = alice) -> httpx.Response:
            return await http.post("/v1/realtime/client_secrets", json=body, headers=auth)

        tools = [{"type": "function", "name": f"t{i}", "parameters": {}} for i in range(40)]
        for body, code, param in [
            ({"expires_after": {"anchor": "created_at", "seconds": 7200}},
             "expires_after_too_long", "expires_after.seconds"),
            ({"session": {"type": "realtime", "model": "gpt-4o-realtime-preview"}},
             "model_not_allowed", "session.model"),
            ({"session": {"type": "realtime", "tools": tools}}, "too_many_tools", "session.tools"),
        ]:  # fmt: skip
            refused = await secret(body)
            assert refused.status_code == 400, refused.text
            assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (code, param)
        assert not sim.ephemeral  # nothing refused was forwarded

        # Within bounds: no lifetime asked, so the ceiling; no model, so the configured one.
        minted = await secret({})
        assert minted.status_code == 200, minted.text
        data = minted.json()
        assert data["session"]["model"] == "gpt-realtime"
        assert 295 <= data["expires_at"] - time.time() <= 300

        # A minted secret holds one of alice's two session slots until it expires.
        assert (await secret({"expires_after": {"anchor": "created_at", "seconds": 60}})).status_code == 200
        capped = await secret({})
        assert capped.status_code == 429 and capped.json()["error"]["code"] == "session_limit"
        ws = await _open(gw, additional_headers=alice)
        error, code = await _refused(ws)
        assert (error["error"]["code"], code) == ("session_limit", 4429)
        assert len(sim.ephemeral) == 2

        # One budget of 6 per minute across both token routes (refusals spend it too: the
        # budget is checked before any work).
        bob = _bearer(gw, "bob")
        for _ in range(4):
            assert (await http.post("/api/realtime/session", headers=bob)).status_code == 200
        assert (await secret({}, bob)).status_code == 200
        assert (await http.post("/api/realtime/session", headers=bob)).status_code == 200
        limited = await secret({}, bob)
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert (await http.post("/api/realtime/session", headers=bob)).status_code == 429
        assert len(sim.ephemeral) == 3


async def test_duplicate_type_keys_cannot_smuggle_an_event_past_the_limits(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    settings = _settings(make_settings, sim, control_messages_per_min=2)
    async with gateway_factory(settings) as gw:
        ws = await _open(gw)
        try:
            await _next(ws, "session.created")
            item = '{"type":"message","role":"user","content":[{"type":"input_text","text":"%s"}]}'
            audio = base64.b64encode(b"\0\0" * 240).decode()
            smuggled = [
                # Starts like an append; a parser reads the last `type`.
                '{"type":"input_audio_buffer.append","type":"conversation.item.create","item":'
                + item % "first smuggled" + "}",
                # Starts exactly like a plain append, with more keys after the audio.
                '{"type":"input_audio_buffer.append","audio":"' + audio
                + '","type":"conversation.item.create","item":' + item % "second smuggled" + "}",
                '{"type":"input_audio_buffer.append","type":"conversation.item.create","item":'
                + item % "third smuggled" + "}",
            ]  # fmt: skip
            for frame in smuggled:
                await ws.send(frame)
            # The control limit (2 a minute) counted them: the third was refused.
            error = (await _next(ws, "error"))["error"]
            assert error["code"] == "rate_limited"
        finally:
            await ws.close()
        await gw.wait_idle()
        convs, _ = await gw.state.store.list_conversations()
        conv = await gw.state.store.get_conversation(convs[0].id)
        assert conv is not None
        assert sorted(t.text for t in conv.turns) == ["first smuggled", "second smuggled"]
    forwarded = sim.connections[-1].received
    # Upstream got each event as it was read here, and nothing as an append.
    assert [e["type"] for e in forwarded] == ["conversation.item.create"] * 2


async def test_an_append_without_audio_is_refused_and_the_session_lives_on(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    async with gateway_factory(_settings(make_settings, sim)) as gw:
        ws = await _open(gw)
        try:
            await _next(ws, "session.created")
            await ws.send('{"type":"input_audio_buffer.append"}')
            error = (await _next(ws, "error"))["error"]
            assert (error["code"], error["param"]) == ("missing_required_parameter", "audio")
            await ws.send('{"type":"input_audio_buffer.append","audio":""}')  # empty: dropped
            await ws.send(b"")  # an empty binary frame: dropped
            await asyncio.sleep(1.5)  # a metrics flush runs
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "still here"}]}}))  # fmt: skip
            await ws.send(json.dumps({"type": "response.create"}))
            done = await _next(ws, "response.done", 20)
            assert done["response"]["status"] == "completed"
        finally:
            await ws.close()
        await gw.wait_idle()
        summary = gw.state.metrics.summary()
        assert summary["voxgate_active_sessions"]["engine=openai-compat"] == 0
        assert "engine=openai-compat" in summary["voxgate_sessions"]
    assert all(e.get("type") != "input_audio_buffer.append" for e in sim.connections[-1].received)


async def test_a_truncate_at_the_end_of_the_audio_is_a_completed_turn(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    async with gateway_factory(_settings(make_settings, sim)) as gw:
        ws = await _open(gw)
        try:
            await _next(ws, "session.created")
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "say something"}]}}))  # fmt: skip
            await ws.send(json.dumps({"type": "response.create"}))
            audio = bytearray()
            item_id = None
            async with asyncio.timeout(20):
                while (event := json.loads(await ws.recv()))["type"] != "response.done":
                    if event["type"] == "response.output_audio.delta":
                        item_id = event["item_id"]
                        audio += base64.b64decode(event["delta"])
            # What Pipecat sends once playback ends: the full length.
            await ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": item_id,
                                      "content_index": 0, "audio_end_ms": len(audio) // 48}))  # fmt: skip
            await _next(ws, "conversation.item.truncated")
        finally:
            await ws.close()
        await gw.wait_idle()
        convs, _ = await gw.state.store.list_conversations()
        conv = await gw.state.store.get_conversation(convs[0].id)
        assert conv is not None
        said = [t for t in conv.turns if t.role == "assistant"]
        assert len(said) == 1 and said[0].text == "You said: say something."
        assert said[0].interrupted is False and said[0].heard_text is None
        assert said[0].audio_ms == len(audio) // 48


async def test_audio_faster_than_real_time_is_paced_not_cut_and_big_appends_pass(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    settings = _settings(make_settings, sim, compat_audio_burst_s=2.0, audio_rate_multiple=10.0)
    async with gateway_factory(settings) as gw:
        ws = await _open(gw)
        try:
            await _next(ws, "session.created")
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "audio": {"input": {"turn_detection": None}}}}))  # fmt: skip
            await _next(ws, "session.updated")
            # One append of 5 s (320 KB of base64, over the 256 KiB /ws frame limit): accepted.
            five = base64.b64encode(b"\0\0" * 24000 * 5).decode()
            assert len(five) == 320_000
            started = time.monotonic()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": five}))
            # Then a 20 s recording sent in one go, in 100 ms chunks.
            chunk = base64.b64encode(b"\0\0" * 2400).decode()
            for _ in range(200):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            seen = []
            async with asyncio.timeout(30):
                while (event := json.loads(await ws.recv()))["type"] != "input_audio_buffer.committed":
                    seen.append(event)
            elapsed = time.monotonic() - started
        finally:
            await ws.close()
    assert not [e for e in seen if e["type"] == "error"]  # nothing refused, no rate_limited
    # 25 s of audio against a 2 s burst at 10x real time: about 2.3 s of pacing.
    assert elapsed >= 2.0
    appended = [e for e in sim.connections[-1].received if e["type"] == "input_audio_buffer.append"]
    total = sum(len(base64.b64decode(e["audio"])) for e in appended)
    assert len(appended) == 201 and total == 48000 * 25  # all of it, in order, untouched
