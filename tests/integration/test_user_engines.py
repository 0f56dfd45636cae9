"""A JWT's `engines` claim limits which engines its user may pick, on both endpoints."""

from __future__ import annotations

import time

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.testing.openai_sim import OpenAISimulator

SECRET = "user-engines-test-jwt-secret-0123456789abcdefgh"


def token(user: str, **claims: object) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


@pytest.fixture
async def sim():
    async with OpenAISimulator(keys=["sk-test"], pace=4.0) as simulator:
        yield simulator


@pytest.fixture
def settings(make_settings, sim):
    return make_settings(
        engine="cascade", allowed_engines=["openai"], auth="jwt", jwt_secret=SECRET,
        openai_api_key="sk-test", openai_url=sim.url,
    )  # fmt: skip


async def test_claim_restricts_the_choice_and_picks_the_default(settings, gateway_factory) -> None:
    async with gateway_factory(settings) as gw:
        only_cascade = token("cora", engines=["cascade"])
        async with VoxgateClient(gw.ws_url, token=only_cascade) as client:
            await client.send({"type": "start", "engine": "openai"})
            error = await client.wait_for("error", fail_on_fatal=False)
            assert error["code"] == "bad_request" and error["fatal"] is False
            assert "not allowed for this user; allowed: cascade" in error["message"]
            # The session survives the refusal: the allowed engine still starts.
            ready = await client.start()
            assert ready["engine"] == "cascade"
        # The server's default (cascade) is not theirs: they get their first allowed engine.
        async with VoxgateClient(gw.ws_url, token=token("olga", engines=["openai"])) as client:
            assert (await client.start())["engine"] == "openai"
        # No claim: every engine the server allows.
        async with VoxgateClient(gw.ws_url, token=token("ned")) as client:
            assert (await client.start(engine="openai"))["engine"] == "openai"


async def test_claim_naming_no_enabled_engine_is_engine_unavailable(settings, gateway_factory) -> None:
    async with gateway_factory(settings) as gw:
        async with VoxgateClient(gw.ws_url, token=token("eli", engines=["elevenlabs"])) as client:
            await client.send({"type": "start"})
            error = await client.wait_for("error", fail_on_fatal=False)
            assert error["code"] == "engine_unavailable" and error["fatal"] is True
            with pytest.raises(ProtocolFailure):
                await client.recv(5)
            assert client.close_code == 4503


async def test_malformed_claim_refuses_the_token(settings, gateway_factory) -> None:
    async with gateway_factory(settings) as gw:
        async with VoxgateClient(gw.ws_url, token=token("mal", engines="cascade")) as client:
            with pytest.raises(ProtocolFailure) as info:
                await client.start()
            assert info.value.error is not None and info.value.error["code"] == "unauthorized"
            assert "'engines' claim" in info.value.error["message"]


async def test_compatible_endpoint_honours_the_claim(settings, gateway_factory) -> None:
    async with gateway_factory(settings) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/realtime?model=gpt-realtime"
        headers = {"Authorization": f"Bearer {token('cora', engines=['cascade'])}"}
        async with connect(url, additional_headers=headers) as ws:
            event = orjson.loads(await ws.recv())
            assert event["type"] == "error" and event["error"]["code"] == "engine_not_enabled"
            assert "your token does not allow the openai engine" in event["error"]["message"]
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4503
        allowed = {"Authorization": f"Bearer {token('olga', engines=['openai'])}"}
        async with connect(url, additional_headers=allowed) as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"


def test_cli_token_engine_option_sets_the_claim(monkeypatch) -> None:
    from typer.testing import CliRunner

    from voxgate.cli import app

    monkeypatch.setenv("VOXGATE_JWT_SECRET", SECRET)
    result = CliRunner().invoke(app, ["token", "--user", "cora", "--engine", "cascade", "--engine", "openai"])
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "cora" and claims["engines"] == ["cascade", "openai"]
