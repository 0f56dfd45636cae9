"""Saved user settings are the defaults for that user's sessions."""

from __future__ import annotations

import httpx

from voxgate.client import VoxgateClient
from voxgate.testing.openai_sim import OpenAISimulator

KEY = "sk-settings"
SECRET = "settings-secret-" + "x" * 24


async def test_saved_settings_fill_what_start_leaves_out(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0) as sim:
        settings = make_settings(
            engine="openai", openai_api_key=KEY, openai_url=sim.url, auth="jwt", jwt_secret=SECRET
        )
        async with gateway_factory(settings) as gw:
            token = gw.state.authenticator.mint_jwt("ada")
            auth = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=gw.http_url, headers=auth) as http:
                empty = (await http.get("/api/users/me/settings")).json()
                assert empty == {
                    "userId": "ada", "voice": None, "instructions": None, "personality": None, "engine": None,
                }  # fmt: skip
                saved = await http.put(
                    "/api/users/me/settings",
                    json={"voice": "marin", "instructions": "Answer like a pirate.",
                          "personality": {"humor": 95}},
                )  # fmt: skip
                assert saved.status_code == 200, saved.text
                bad = await http.put("/api/users/me/settings", json={"personality": {"humor": 300}})
                assert bad.status_code == 422
                unknown = await http.put("/api/users/me/settings", json={"colour": "blue"})
                assert unknown.status_code == 422
                assert (await http.get("/api/users/me/settings")).json()["voice"] == "marin"

            # Start without those fields: the saved ones are used.
            async with VoxgateClient(gw.ws_url, token) as client:
                await client.start()
            update = next(e for e in sim.accepted[-1].received if e.get("type") == "session.update")
            assert "Answer like a pirate." in update["session"]["instructions"]
            assert "humor" in update["session"]["instructions"]
            assert update["session"]["audio"]["output"]["voice"] == "marin"

            # Fields given in `start` win over the saved ones.
            async with VoxgateClient(gw.ws_url, token) as client:
                await client.start(instructions="Be brief.", voice="cedar")
            update = next(e for e in sim.accepted[-1].received if e.get("type") == "session.update")
            assert "Be brief." in update["session"]["instructions"]
            assert "pirate" not in update["session"]["instructions"]
            assert update["session"]["audio"]["output"]["voice"] == "cedar"

            # Without a token there is no user to save settings for.
            async with httpx.AsyncClient(base_url=gw.http_url) as http:
                assert (await http.get("/api/users/me/settings")).status_code == 401


async def test_anonymous_users_have_no_settings(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings()) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        refused = await http.put("/api/users/me/settings", json={"voice": "alloy"})
        assert refused.status_code == 403
        assert "anonymous" in refused.json()["detail"]
