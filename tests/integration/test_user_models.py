"""Per user, models too: a JWT's `models` claim narrows the models a user may pick (`start.model`
on `/ws`, `?model=` and `session.update` on `/v1/realtime`, client secrets, direct secrets); the
saved settings hold a preferred engine, checked against what the user may use; `/api/config`
answers for the calling user."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.testing.openai_sim import OpenAISimulator

SECRET = "user-models-test-jwt-secret-0123456789abcdefghij"
KEY = "sk-models"
MODELS = ["gpt-realtime", "gpt-realtime-mini", "gpt-4o-mini-transcribe"]


def token(user: str, **claims: object) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


def bearer(user: str, **claims: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, **claims)}"}


@pytest.fixture
async def sim():
    async with OpenAISimulator(keys=[KEY], pace=4.0) as simulator:
        yield simulator


@pytest.fixture
def settings(make_settings, sim):
    return make_settings(
        engine="cascade", allowed_engines=["openai"], auth="jwt", jwt_secret=SECRET,
        openai_api_key=KEY, openai_url=sim.url, openai_api_base=sim.api_base, allowed_models=MODELS,
    )  # fmt: skip


async def next_event(ws, etype: str) -> dict:
    async with asyncio.timeout(10):
        while True:
            event = orjson.loads(await ws.recv())
            if event["type"] == etype:
                return event


async def refusal(client: VoxgateClient) -> dict:
    error = await client.wait_for("error", fail_on_fatal=False)
    assert error["code"] == "bad_request" and error["fatal"] is False, error
    return error


async def test_start_model_is_bounded_by_the_gateway_and_the_models_claim(
    settings, gateway_factory, sim
) -> None:
    async with gateway_factory(settings) as gw:
        mini = token("mia", models=["gpt-realtime-mini"])
        async with VoxgateClient(gw.ws_url, token=mini) as client:
            # A model the gateway allows but her token does not: refused, the session goes on.
            await client.send({"type": "start", "engine": "openai", "model": "gpt-realtime"})
            error = await refusal(client)
            assert "not allowed for this user; allowed: gpt-realtime-mini" in error["message"]
            ready = await client.start(engine="openai", model="gpt-realtime-mini")
            assert ready["engine"] == "openai"
        assert sim.accepted[-1].query["model"] == "gpt-realtime-mini"
        # Naming none, she gets her own model, not the configured gpt-realtime.
        async with VoxgateClient(gw.ws_url, token=mini) as client:
            await client.start(engine="openai")
        assert sim.accepted[-1].query["model"] == "gpt-realtime-mini"

        # No claim: any model the gateway allows; one it does not is refused as such.
        async with VoxgateClient(gw.ws_url, token=token("ned")) as client:
            await client.send({"type": "start", "engine": "openai", "model": "gpt-5-voice"})
            error = await refusal(client)
            assert "not allowed on this gateway" in error["message"]
            assert "VOXGATE_ALLOWED_MODELS" in error["message"]
            await client.start(engine="openai", model="gpt-realtime-mini")
        assert sim.accepted[-1].query["model"] == "gpt-realtime-mini"
        async with VoxgateClient(gw.ws_url, token=token("ned")) as client:
            await client.start(engine="openai")
        assert sim.accepted[-1].query["model"] == "gpt-realtime"  # the configured one

        # The cascade takes no model; a claim sharing nothing with the gateway leaves no model.
        async with VoxgateClient(gw.ws_url, token=token("ned")) as client:
            await client.send({"type": "start", "model": "gpt-realtime"})
            assert "cascade engine does not take a model" in (await refusal(client))["message"]
            assert (await client.start())["engine"] == "cascade"
        async with VoxgateClient(gw.ws_url, token=token("ola", models=["llama3"])) as client:
            await client.send({"type": "start", "engine": "openai"})
            assert "your token allows no model this gateway offers" in (await refusal(client))["message"]
            # Her claim does not touch the cascade, which has no model to choose.
            assert (await client.start())["engine"] == "cascade"


async def test_models_claim_on_the_compatible_endpoints(settings, gateway_factory, sim) -> None:
    async with gateway_factory(settings) as gw:
        base = f"ws://127.0.0.1:{gw.port}/v1/realtime"
        mini = bearer("mia", models=["gpt-realtime-mini"])
        async with connect(f"{base}?model=gpt-realtime", additional_headers=mini) as ws:
            event = orjson.loads(await ws.recv())
            assert event["type"] == "error" and event["error"]["code"] == "model_not_allowed"
            assert "not allowed for this user" in event["error"]["message"]
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4000
        dialled = len(sim.connections)
        # Without ?model= she gets her model; a session.update naming another is dropped.
        async with connect(base, additional_headers=mini) as ws:
            created = orjson.loads(await ws.recv())
            assert created["type"] == "session.created"
            assert created["session"]["model"] == "gpt-realtime-mini"
            update = {"type": "session.update", "session": {"type": "realtime", "model": "gpt-realtime"}}
            await ws.send(orjson.dumps(update).decode())
            event = await next_event(ws, "error")
            assert event["error"]["code"] == "model_not_allowed"
            assert event["error"]["param"] == "session.model"
            # The session continues.
            await ws.send(orjson.dumps({"type": "session.update", "session": {"type": "realtime"}}).decode())
            await next_event(ws, "session.updated")
        assert len(sim.connections) == dialled + 1
        assert sim.connections[-1].query["model"] == "gpt-realtime-mini"
        assert not any(
            isinstance(e, dict) and (e.get("session") or {}).get("model") == "gpt-realtime"
            for e in sim.connections[-1].received
        )  # the refused update never reached OpenAI

        async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
            secrets = "/v1/realtime/client_secrets"
            minted = await http.post(secrets, json={}, headers=mini)
            assert minted.status_code == 200, minted.text
            assert minted.json()["session"]["model"] == "gpt-realtime-mini"
            asked = {"session": {"type": "realtime", "model": "gpt-realtime"}}
            refused = await http.post(secrets, json=asked, headers=mini)
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "model_not_allowed"
            assert refused.json()["error"]["param"] == "session.model"
            # A direct OpenAI secret gets her model; her engines claim can refuse it altogether.
            direct = await http.post("/api/realtime/session", json={"direct": "openai"}, headers=mini)
            assert direct.status_code == 200, direct.text
            assert direct.json()["model"] == "gpt-realtime-mini"
            cascade_only = bearer("cora", engines=["cascade"])
            direct = await http.post("/api/realtime/session", json={"direct": "openai"}, headers=cascade_only)
            assert direct.status_code == 403
            assert direct.json()["code"] == "bad_request"
            assert "your token does not allow the openai engine" in direct.json()["detail"]


async def test_malformed_models_claim_refuses_the_token(settings, gateway_factory) -> None:
    async with gateway_factory(settings) as gw:
        async with VoxgateClient(gw.ws_url, token=token("mal", models="gpt-realtime")) as client:
            with pytest.raises(ProtocolFailure) as info:
                await client.start()
            assert info.value.error is not None and info.value.error["code"] == "unauthorized"
            assert "'models' claim must be a list of model names" in info.value.error["message"]


async def test_saved_engine_is_checked_against_what_the_user_may_use(
    settings, gateway_factory, sim
) -> None:
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        url = "/api/users/me/settings"
        refused = await http.put(url, json={"engine": "openai"}, headers=bearer("cora", engines=["cascade"]))
        assert refused.status_code == 400
        assert refused.json() == {
            "detail": "engine 'openai' is not allowed for this user; allowed: cascade",
            "code": "bad_request",
        }
        unknown = await http.put(url, json={"engine": "elevenlabs"}, headers=bearer("ned"))
        assert unknown.status_code == 400
        assert "not allowed on this server; allowed: cascade, openai" in unknown.json()["detail"]
        assert (await http.get(url, headers=bearer("ned"))).json()["engine"] is None  # nothing saved

        saved = await http.put(url, json={"engine": "openai", "voice": "marin"}, headers=bearer("ned"))
        assert saved.status_code == 200 and saved.json()["engine"] == "openai"
        assert (await http.get(url, headers=bearer("ned"))).json()["engine"] == "openai"

        # A start that names no engine gets the saved one; naming one still wins.
        async with VoxgateClient(gw.ws_url, token=token("ned")) as client:
            assert (await client.start())["engine"] == "openai"
        async with VoxgateClient(gw.ws_url, token=token("ned")) as client:
            assert (await client.start(engine="cascade"))["engine"] == "cascade"
        # A later token that no longer allows it: the session falls back to what it allows.
        async with VoxgateClient(gw.ws_url, token=token("ned", engines=["cascade"])) as client:
            assert (await client.start())["engine"] == "cascade"

        # /api/config answers for the caller: their engines, their default, their models.
        public = (await http.get("/api/config")).json()
        assert public["engines"] == ["cascade", "openai"] and public["defaultEngine"] == "cascade"
        assert public["models"] == MODELS
        mine = await http.get("/api/config", headers=bearer("ned", models=["gpt-realtime-mini"]))
        assert mine.headers["cache-control"] == "no-store"
        assert mine.json()["engines"] == ["cascade", "openai"]
        assert mine.json()["defaultEngine"] == "openai"  # saved
        assert mine.json()["models"] == ["gpt-realtime-mini"]
        cora = (await http.get("/api/config", headers=bearer("cora", engines=["cascade"]))).json()
        assert (cora["engines"], cora["defaultEngine"], cora["models"]) == (["cascade"], "cascade", [])
        olga = (await http.get("/api/config", headers=bearer("olga", engines=["openai"]))).json()
        assert (olga["engines"], olga["defaultEngine"]) == (["openai"], "openai")
        bad = await http.get("/api/config", headers={"Authorization": "Bearer not-a-jwt"})
        assert bad.status_code == 401


def test_cli_token_model_option_sets_the_claim(monkeypatch) -> None:
    from typer.testing import CliRunner

    from voxgate.cli import app

    monkeypatch.setenv("VOXGATE_JWT_SECRET", SECRET)
    args = ["token", "--user", "mia", "--engine", "openai", "--model", "gpt-realtime-mini"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["engines"] == ["openai"] and claims["models"] == ["gpt-realtime-mini"]
