"""The gateway's HTTP surface and the protocol before `start`, independent of any engine."""

from __future__ import annotations

import asyncio
import base64

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from voxgate.client import ProtocolFailure, VoxgateClient


async def test_health_status_config_and_metrics(make_settings, gateway_factory) -> None:
    settings = make_settings(engine="cascade", allowed_engines=["openai"])
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        health = await http.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["store"] == "ok"
        assert set(body["engines"]) == {"cascade", "openai"}
        assert body["engines"]["cascade"]["breaker"] == "closed"
        assert body["status"] in ("ok", "degraded")
        status = (await http.get("/ws/status")).json()
        assert status["sessions"] == 0 and status["websockets"] == 0
        config = (await http.get("/api/config")).json()
        assert config["engines"] == ["cascade", "openai"] and config["protocol"] == 1
        prom = (await http.get("/metrics")).text
        assert "voxgate_sessions_total" in prom and "voxgate_active_sessions" in prom
        assert (await http.get("/api/realtime/metrics")).json()["live"]["sessions"] == 0


async def test_messages_before_start_get_clear_errors(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings()) as gw:
        client = await VoxgateClient(gw.ws_url).connect()
        assert client.subprotocol == "voxgate.v1"
        await client.send_raw("this is not json")
        err = await client.wait_for("error")
        assert err["code"] == "invalid_json" and err["fatal"] is False
        await client.send_raw(b"\x00\x01" * 480)  # binary audio before start
        err = await client.wait_for("error")
        assert err["code"] == "not_started"
        await client.send({"type": "audio_chunk", "pcm16Base64": base64.b64encode(b"\0\0").decode()})
        assert (await client.wait_for("error"))["code"] == "not_started"
        await client.send({"type": "no_such_type"})
        err = await client.wait_for("error")
        assert err["code"] == "unknown_type" and "no_such_type" in err["message"]
        await client.send({"type": "start", "inputRate": 12345})
        err = await client.wait_for("error")
        assert err["code"] == "bad_request" and "inputRate" in err["message"]
        await client.ping("p1")
        assert (await client.wait_for("pong"))["id"] == "p1"
        await client.stop()
        with pytest.raises(ProtocolFailure):
            await client.recv(5)
        assert client.close_code == 1000


async def test_engine_not_allowed_is_refused(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings(engine="cascade")) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            await client.send({"type": "start", "engine": "openai"})
            err = await client.wait_for("error")
            assert err["code"] == "bad_request" and "not allowed" in err["message"]


async def test_invalid_frame_flood_closes_with_1008(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings()) as gw:
        async with connect(gw.ws_url) as ws:
            for _ in range(25):
                await ws.send("{broken")
            codes = []
            final = None
            try:
                while True:
                    msg = orjson.loads(await ws.recv())
                    codes.append(msg["code"])
                    if msg.get("fatal"):
                        final = msg
            except Exception:
                pass
            assert ws.close_code == 1008
            assert final is not None and "invalid frames" in final["message"]
            assert codes.count("invalid_json") >= 20
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            assert (await http.get("/health")).status_code == 200


async def test_refused_client_gets_the_reason_not_a_connection_error(make_settings, gateway_factory) -> None:
    """A client that sends before reading a refusal learns why (the CLI prints this sentence)."""
    settings = make_settings(auth="jwt", jwt_secret="basics-test-jwt-secret-0123456789abcdef")
    async with gateway_factory(settings) as gw:
        client = await VoxgateClient(gw.ws_url).connect()
        await asyncio.sleep(0.3)  # the refusal and the close are on their way
        with pytest.raises(ProtocolFailure) as refused:
            for _ in range(3):
                await client.send({"type": "start"})
                await asyncio.sleep(0.2)
        assert refused.value.error is not None
        assert refused.value.error["code"] == "unauthorized"
        assert "authentication required" in str(refused.value)
        assert client.close_code == 4401


async def test_missing_provider_configuration_is_engine_unavailable_everywhere(
    make_settings, gateway_factory
) -> None:
    """No key (or a malformed URL) is a configuration problem: `/health` says the engine cannot
    work, and a session asking for it is refused `engine_unavailable` / 4503 without dialling."""
    settings = make_settings(
        engine="cascade",
        allowed_engines=["openai", "elevenlabs"],
        openai_api_key=None,
        elevenlabs_agent_id=None,
    )
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        body = (await http.get("/health")).json()
        assert body["status"] == "degraded"
        assert body["engines"]["openai"]["available"] is False
        assert body["engines"]["elevenlabs"]["available"] is False
        assert body["engines"]["cascade"]["available"] is True
        async with VoxgateClient(gw.ws_url) as client:
            await client.send({"type": "start", "engine": "openai"})
            error = await client.wait_for("error", timeout=10, fail_on_fatal=False)
            assert error["code"] == "engine_unavailable" and error["fatal"] is True
            assert "OPENAI_API_KEY" in error["message"]
            with pytest.raises(ProtocolFailure):
                while True:
                    await client.recv(5)
            assert client.close_code == 4503
        async with VoxgateClient(gw.ws_url) as client:
            await client.send({"type": "start", "engine": "elevenlabs"})
            error = await client.wait_for("error", timeout=10, fail_on_fatal=False)
            assert error["code"] == "engine_unavailable"
            assert "VOXGATE_ELEVENLABS_AGENT_ID" in error["message"]


async def test_malformed_provider_url_is_reported_by_health(make_settings, gateway_factory) -> None:
    settings = make_settings(
        engine="openai", openai_api_key="sk-test", openai_url="https://api.openai.com/v1/realtime"
    )
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        assert (await http.get("/health")).json()["engines"]["openai"]["available"] is False
        async with VoxgateClient(gw.ws_url) as client:
            await client.send({"type": "start"})
            error = await client.wait_for("error", timeout=10, fail_on_fatal=False)
            assert error["code"] == "engine_unavailable" and "VOXGATE_OPENAI_URL" in error["message"]
