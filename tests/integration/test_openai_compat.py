"""The OpenAI-compatible endpoint: the official `openai` SDK talks to voxgate as if it were OpenAI.

Chain under test: SDK (GA `client.realtime.connect`) -> voxgate `/v1/realtime` -> the shipped
OpenAI GA simulator. The SDK only ever holds a voxgate token (or nothing useful); the simulator
only ever sees the server's key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from websockets.asyncio.client import ClientConnection

from voxgate.config import Settings
from voxgate.testing.gateway import GatewayHandle
from voxgate.testing.openai_sim import OpenAISimulator
from voxgate.testing.speech import silence, synthesize

SERVER_KEY = "sk-server-secret-key-0123456789"
CLIENT_TOKEN = "client-side-token-abcdef"
PHRASE = "what is the weather like today"
JWT_SECRET = "compat-test-secret-0123456789abcdef"


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(keys={SERVER_KEY}, pace=8.0, transcript=PHRASE) as s:
        yield s


def _settings(make_settings: Callable[..., Settings], sim: OpenAISimulator, **kw: Any) -> Settings:
    kw.setdefault("engine", "openai")  # the compatible endpoints are open only with it enabled
    return make_settings(
        openai_api_key=SERVER_KEY,
        openai_url=sim.url,
        openai_api_base=sim.api_base,
        **kw,
    )


def _sdk(gw: GatewayHandle, api_key: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        api_key=api_key,
        base_url=f"{gw.http_url}/v1",
        websocket_base_url=f"ws://127.0.0.1:{gw.port}/v1",
        max_retries=0,
    )


def _event_classes() -> dict[str, type]:
    union = typing.get_args(RealtimeServerEvent)[0]
    classes: dict[str, type] = {}
    for cls in typing.get_args(union):
        for literal in typing.get_args(cls.model_fields["type"].annotation):
            classes[literal] = cls
    return classes


def _speech() -> bytes:
    return silence(200, 24000) + synthesize(PHRASE, 24000) + silence(900, 24000)


class _Recorder:
    """Reads raw frames from an SDK connection, parses each with the SDK, keeps both."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.raw: list[bytes] = []
        self.events: list[Any] = []

    async def until(self, etype: str, timeout: float = 20.0) -> list[Any]:
        seen: list[Any] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.conn.recv_bytes()
                self.raw.append(raw)
                event = self.conn.parse_event(raw)
                self.events.append(event)
                seen.append(event)
                if event.type == etype:
                    return seen


async def _wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_official_sdk_through_voxgate_text_and_audio_turns(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    async with gateway_factory(_settings(make_settings, sim)) as gw:
        client = _sdk(gw, CLIENT_TOKEN)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            rec = _Recorder(conn)
            await rec.until("conversation.created")
            await conn.session.update(session={
                "type": "realtime", "instructions": "You are a test.",
                "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
            })  # fmt: skip
            updated = (await rec.until("session.updated"))[-1]
            assert updated.session.instructions == "You are a test."

            # The live session is visible to operators while it runs.
            async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
                status = (await http.get("/ws/status")).json()
                assert status["byEngine"].get("openai-compat") == 1
                listed = (await http.get("/api/realtime/sessions")).json()["sessions"]
                assert [s["engine"] for s in listed] == ["openai-compat"]

            # A text turn.
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "good morning"}]})  # fmt: skip
            await conn.response.create()
            events = await rec.until("response.done")
            assert events[-1].response.status == "completed"
            said = [
                e.transcript for e in events if e.type == "response.output_audio_transcript.done"
            ]
            assert said == ["You said: good morning."]

            # An audio turn with server VAD, sent as the SDK sends it.
            pcm = _speech()
            for i in range(0, len(pcm), 4800):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(pcm[i : i + 4800]).decode()
                )
            events = await rec.until("response.done")
            heard = [e.transcript for e in events
                     if e.type == "conversation.item.input_audio_transcription.completed"]  # fmt: skip
            answer = [
                e.transcript for e in events if e.type == "response.output_audio_transcript.done"
            ]
            audio = b"".join(base64.b64decode(e.delta) for e in events
                             if e.type == "response.output_audio.delta")  # fmt: skip
            assert heard == [PHRASE]
            assert answer == [f"You said: {PHRASE}."]
            assert audio == synthesize(answer[0], 24000)  # relayed byte for byte

        # Every event parsed as its own GA model, none as the generic fallback.
        classes = _event_classes()
        for event in rec.events:
            assert type(event) is classes.get(event.type), event.type
        assert {"session.created", "response.output_audio.delta", "input_audio_buffer.speech_stopped",
                "conversation.item.input_audio_transcription.completed"} <= {e.type for e in rec.events}  # fmt: skip

        # Keys: the simulator saw only the server key; the SDK side never saw it.
        upstream = sim.accepted[-1]
        assert upstream.headers["authorization"] == f"Bearer {SERVER_KEY}"
        assert "openai-beta" not in upstream.headers
        assert all(CLIENT_TOKEN not in v for v in upstream.headers.values())
        assert upstream.query == {"model": "gpt-realtime"}
        assert not any(SERVER_KEY.encode() in raw for raw in rec.raw)
        # Appends were relayed untouched (the simulator recorded the very audio we sent).
        appended = b"".join(base64.b64decode(e["audio"]) for e in upstream.received
                            if e.get("type") == "input_audio_buffer.append")  # fmt: skip
        assert appended == pcm

        # Transcripts stored: typed user text, assistant replies, the heard user speech.
        state = gw.state

        async def stored() -> Any:
            convs, _ = await state.store.list_conversations()
            if not convs:
                return None
            conv = await state.store.get_conversation(convs[0].id)
            return conv if conv is not None and len(conv.turns) >= 4 else None

        await _wait_for(stored)
        convs, _ = await state.store.list_conversations()
        conv = await state.store.get_conversation(convs[0].id)
        assert conv is not None and conv.engine == "openai-compat"
        turns = [(t.role, t.text) for t in conv.turns]
        assert ("user", "good morning") in turns
        assert ("assistant", "You said: good morning.") in turns
        assert ("user", PHRASE) in turns
        assert ("assistant", f"You said: {PHRASE}.") in turns
        spoken = next(t for t in conv.turns if t.text == f"You said: {PHRASE}.")
        assert spoken.audio_ms and spoken.audio_ms > 500

        # Audio counters are flushed once a second and when the session ends.
        await _wait_for(lambda: _async(not state.sessions))
        summary = state.metrics.summary()
        assert summary["voxgate_sessions"]["engine=openai-compat"] == 1
        assert summary["voxgate_audio_in_seconds"]["total"] > 1.0
        assert summary["voxgate_audio_out_seconds"]["total"] > 1.0
        assert summary["voxgate_active_sessions"]["engine=openai-compat"] == 0


async def _async(value: Any) -> Any:
    return value


async def _raw(gw: GatewayHandle, **kw: Any) -> ClientConnection:
    return await websockets.connect(
        f"ws://127.0.0.1:{gw.port}/v1/realtime?model=gpt-realtime", open_timeout=10, **kw
    )


async def _error_then_close(ws: ClientConnection) -> tuple[dict[str, Any], int | None]:
    async with asyncio.timeout(10):
        while (error := json.loads(await ws.recv()))["type"] != "error":
            pass  # events relayed before the refusal (session.created, conversation.created)
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    return error, ws.close_code


async def test_beta_clients_get_a_clear_error_and_close_4000(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    async with gateway_factory(_settings(make_settings, sim)) as gw:
        # The SDK's legacy beta interface (it adds `OpenAI-Beta: realtime=v1`).
        async with _sdk(gw, CLIENT_TOKEN).beta.realtime.connect(model="gpt-realtime") as conn:
            event = await asyncio.wait_for(conn.recv(), 10)
            with pytest.raises(websockets.ConnectionClosedError) as info:
                await asyncio.wait_for(conn.recv(), 10)
        assert event.type == "error" and event.error.code == "beta_api_shape_disabled"
        assert "GA" in event.error.message and "client.realtime.connect" in event.error.message
        assert info.value.rcvd is not None and info.value.rcvd.code == 4000
        # Beta-era browser code (the beta subprotocol): same answer, `realtime` selected.
        ws = await _raw(gw, subprotocols=["realtime", "openai-beta.realtime-v1"])
        assert ws.subprotocol == "realtime"
        error, code = await _error_then_close(ws)
        assert (error["error"]["code"], code) == ("beta_api_shape_disabled", 4000)
    assert sim.connections == []  # never dialled upstream


async def test_auth_on_refuses_bad_tokens_and_accepts_jwt_and_browser_subprotocol(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    settings = _settings(make_settings, sim, auth="jwt", jwt_secret=JWT_SECRET)
    async with gateway_factory(settings) as gw:
        # The SDK with something that is not a voxgate token: an OpenAI-shaped error, then 4401.
        client = _sdk(gw, "sk-not-a-voxgate-token")
        async with client.realtime.connect(model="gpt-realtime") as conn:
            event = await asyncio.wait_for(conn.recv(), 10)
            assert event.type == "error" and event.error.code == "unauthorized"
            with pytest.raises(websockets.ConnectionClosedError) as info:
                await asyncio.wait_for(conn.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4401
        assert sim.connections == []

        token = gw.state.authenticator.mint_jwt("alice")
        async with _sdk(gw, token).realtime.connect(model="gpt-realtime") as conn:
            event = await asyncio.wait_for(conn.recv(), 10)
            assert event.type == "session.created"
            assert gw.state.sessions and next(iter(gw.state.sessions.values())).user_id == "alice"

        # Browser code written for OpenAI: the token rides in a subprotocol; `realtime` selected.
        ws = await _raw(gw, subprotocols=["realtime", f"openai-insecure-api-key.{token}"])
        try:
            assert ws.subprotocol == "realtime"
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert first["type"] == "session.created"
        finally:
            await ws.close()
        for conn_rec in sim.connections:
            assert conn_rec.headers["authorization"] == f"Bearer {SERVER_KEY}"
            assert all(token not in v for v in conn_rec.headers.values())
            assert conn_rec.subprotocols == []


async def test_limits_truncation_and_upstream_close_mirroring(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    settings = _settings(
        make_settings, sim, compat_max_event_bytes=20_000, control_messages_per_min=6
    )
    async with gateway_factory(settings) as gw:
        ws = await _raw(gw)
        try:
            async with asyncio.timeout(20):
                assert json.loads(await ws.recv())["type"] == "session.created"
                # A typed turn, then cut the assistant short as a player would after 200 ms.
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "tell me a long story please"}]}}))  # fmt: skip
                await ws.send(json.dumps({"type": "response.create"}))
                item_id = None
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "response.output_audio.delta":
                        item_id = event["item_id"]
                    if event["type"] == "response.done":
                        break
                await ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": item_id,
                                          "content_index": 0, "audio_end_ms": 200}))  # fmt: skip
                while json.loads(await ws.recv())["type"] != "conversation.item.truncated":
                    pass
                # Control-rate limit (6 per minute; 3 used): the extra events are refused.
                codes = []
                for _ in range(4):
                    await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                for _ in range(4):
                    event = json.loads(await ws.recv())
                    codes.append(event.get("error", {}).get("code") or event["type"])
                assert codes.count("rate_limited") == 1
                # Too big a frame: an OpenAI-shaped error, then 1009.
                big = base64.b64encode(b"\0" * 30_000).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": big}))
                error, code = await _error_then_close(ws)
                assert error["error"]["code"] == "payload_too_large" and code == 1009
        finally:
            await ws.close()

        # The interrupted assistant turn is stored with the part that was heard.
        store = gw.state.store

        async def interrupted() -> Any:
            convs, _ = await store.list_conversations()
            conv = await store.get_conversation(convs[0].id) if convs else None
            return conv and [t for t in conv.turns if t.interrupted]

        await _wait_for(interrupted)
        turn = (await interrupted())[0]
        assert turn.role == "assistant" and turn.audio_ms == 200
        assert turn.text == "You said: tell me a long story please."
        assert turn.heard_text is not None and turn.text.startswith(turn.heard_text)
        assert len(turn.heard_text) < len(turn.text)

        # OpenAI ending the session (expiry) reaches the client as OpenAI sent it: error, 1001.
        ws = await _raw(gw)
        async with asyncio.timeout(10):
            assert json.loads(await ws.recv())["type"] == "session.created"
            sim.inject_error(
                "session_expired", "Your session hit the maximum duration.", close=1001
            )
            while (event := json.loads(await ws.recv()))["type"] != "error":
                pass
            assert event["error"]["code"] == "session_expired"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1001


async def test_client_secrets_passthrough_needs_auth(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    settings = _settings(make_settings, sim, auth="jwt", jwt_secret=JWT_SECRET)
    async with gateway_factory(settings) as gw:
        body = {"expires_after": {"anchor": "created_at", "seconds": 600},
                "session": {"type": "realtime", "model": "gpt-realtime"}}  # fmt: skip
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
            refused = await http.post("/v1/realtime/client_secrets", json=body)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"

            token = gw.state.authenticator.mint_jwt("bob")
            auth = {"Authorization": f"Bearer {token}"}
            # A single-use /ws session token cannot mint provider secrets.
            minted_ws = await http.post("/api/realtime/session", headers=auth)
            ws_token = minted_ws.json()["token"]
            refused_ws = await http.post(
                "/v1/realtime/client_secrets", json=body,
                headers={"Authorization": f"Bearer {ws_token}"},
            )  # fmt: skip
            assert refused_ws.status_code == 401
            minted = await http.post("/v1/realtime/client_secrets", json=body, headers=auth)
            assert minted.status_code == 200, minted.text
            data = minted.json()
            assert data["value"].startswith("ek_") and data["expires_at"] > 0
            assert data["value"] in sim.ephemeral  # minted by the provider with the server key
            assert SERVER_KEY not in minted.text

            bad = dict(body, expires_after={"anchor": "created_at", "seconds": 5})
            rejected = await http.post("/v1/realtime/client_secrets", json=bad, headers=auth)
            assert rejected.status_code == 400
            assert rejected.json()["error"]["param"] == "expires_after.seconds"

        # The official SDK's REST resource works against voxgate too.
        sdk_secret = await _sdk(gw, token).realtime.client_secrets.create(
            session={"type": "realtime", "model": "gpt-realtime"}
        )
        assert sdk_secret.value.startswith("ek_")


async def test_handshake_refusals_and_shutdown_are_openai_shaped(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    settings = _settings(
        make_settings, sim, max_sessions=1, allowed_origins=["https://app.example"]
    )
    async with gateway_factory(settings) as gw:
        # A page from another site.
        ws = await _raw(gw, origin="https://evil.example")
        error, code = await _error_then_close(ws)
        assert (error["error"]["code"], code) == ("forbidden_origin", 4403)

        # OpenAI refusing the upstream handshake: a clear error, then 4502 (no SDK reconnect).
        sim.faults.refuse_next = 1
        ws = await _raw(gw, origin="https://app.example")
        error, code = await _error_then_close(ws)
        assert (error["error"]["code"], code) == ("upstream_unavailable", 4502)
        assert "503" in error["error"]["message"]
        assert gw.state.limiter.total == 0  # the refused session gave its slot back

        # The global session cap.
        first = await _raw(gw)
        assert json.loads(await asyncio.wait_for(first.recv(), 10))["type"] == "session.created"
        second = await _raw(gw)
        error, code = await _error_then_close(second)
        assert (error["error"]["code"], code) == ("session_limit", 4429)

        # Graceful shutdown: an error event a user can read, then 1001 (reconnect is right here).
        await gw.state.shutdown_sessions()
        error, code = await _error_then_close(first)
    assert error["error"]["code"] == "server_shutdown" and code == 1001


#: Browser code exactly as OpenAI's WebSocket guide writes it, pointed at voxgate.
BROWSER_SCRIPT = """
async ({wsUrl, token}) => {
  const ws = new WebSocket(wsUrl, ["realtime", "openai-insecure-api-key." + token]);
  const seen = [];
  return await new Promise((resolve) => {
    const timer = setTimeout(() => { ws.close(); resolve({seen, timeout: true}); }, 30000);
    ws.onopen = () => {
      ws.send(JSON.stringify({type: "session.update", session: {type: "realtime",
        output_modalities: ["text"]}}));
      ws.send(JSON.stringify({type: "conversation.item.create", item: {type: "message",
        role: "user", content: [{type: "input_text", text: "hello from a browser"}]}}));
      ws.send(JSON.stringify({type: "response.create"}));
    };
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      seen.push(msg);
      if (msg.type === "response.done") {
        clearTimeout(timer); const p = ws.protocol; ws.close(1000); resolve({seen, protocol: p});
      }
    };
    ws.onclose = (e) => { clearTimeout(timer); resolve({seen, protocol: ws.protocol, code: e.code}); };
  });
}
"""


@pytest.mark.browser
async def test_real_browser_with_openai_style_subprotocol_auth(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    chromium = os.environ.get("VOXGATE_TEST_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(chromium):  # noqa: ASYNC240 - a one-off stat
        pytest.fail(f"{chromium} is missing: run scripts/setup.sh (it apt-installs chromium)")
    from playwright.async_api import async_playwright

    settings = _settings(make_settings, sim, auth="jwt", jwt_secret=JWT_SECRET)
    async with gateway_factory(settings) as gw, async_playwright() as pw:
        token = gw.state.authenticator.mint_jwt("carol")
        browser = await pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
            timeout=60_000,
        )
        try:
            page = await browser.new_page()
            await page.goto(gw.http_url + "/", timeout=30_000)  # a same-origin page
            url = f"ws://127.0.0.1:{gw.port}/v1/realtime?model=gpt-realtime"
            refused = await page.evaluate(BROWSER_SCRIPT, {"wsUrl": url, "token": "bad"})
            talked = await page.evaluate(BROWSER_SCRIPT, {"wsUrl": url, "token": token})
        finally:
            await browser.close()
    assert refused["code"] == 4401 and refused["seen"][0]["error"]["code"] == "unauthorized"
    assert talked["protocol"] == "realtime"  # Chromium checked the selection; no token echoed
    texts = [m["text"] for m in talked["seen"] if m["type"] == "response.output_text.done"]
    assert texts == ["You said: hello from a browser."]
    assert not any(SERVER_KEY in json.dumps(m) for m in talked["seen"])
    assert all(c.headers["authorization"] == f"Bearer {SERVER_KEY}" for c in sim.connections)


async def test_client_secrets_need_a_real_user_when_auth_is_off(
    make_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    async with gateway_factory(_settings(make_settings, sim)) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
            refused = await http.post("/v1/realtime/client_secrets", json={})
            assert refused.status_code == 403
            assert "VOXGATE_AUTH=jwt" in refused.json()["error"]["message"]
    assert not sim.ephemeral  # nothing was minted on the operator's account
