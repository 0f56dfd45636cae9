"""One process, no Redis (the memory shared state): the same admin surface as a cluster."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from voxgate.client import VoxgateClient

SECRET = "admin-sessions-test-jwt-secret-0123456789abcdef"


def token(sub: str, admin: bool = False) -> str:
    claims = {"sub": sub, "exp": int(time.time()) + 600, **({"admin": True} if admin else {})}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_one_process_lists_ends_and_drains_like_a_cluster(make_settings, gateway_factory) -> None:
    settings = make_settings(auth="jwt", jwt_secret=SECRET, node_name="solo")
    admin = {"Authorization": f"Bearer {token('root', admin=True)}"}
    async with gateway_factory(settings) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=15, headers=admin) as http:
            health = (await http.get("/health")).json()
            assert health["shared"] == {"kind": "memory", "status": "ok"}
            assert [n["node"] for n in health["nodes"]] == ["solo"] and health["node"] == "solo"
            client = await VoxgateClient(gw.ws_url, token("ivy")).connect()
            try:
                await client.ping("i")
                await client.wait_for("pong", timeout=15)
                listed = (await http.get("/api/realtime/sessions")).json()["sessions"]
                assert [(s["userId"], s["node"]) for s in listed] == [("ivy", "solo")]
                # Only an admin may end a session.
                other = {"Authorization": f"Bearer {token('ivy')}"}
                sid = listed[0]["sessionId"]
                forbidden = await http.delete(f"/api/realtime/sessions/{sid}", headers=other)
                assert forbidden.status_code == 403
                ended = await http.delete(f"/api/realtime/sessions/{sid}")
                assert ended.status_code == 202
                status = await client.wait_for("status", timeout=15)
                assert status == {**status, "status": "disconnected", "reason": "ended_by_admin"}
                with pytest.raises(Exception):  # noqa: B017 - the close, in whichever form
                    while True:
                        await client.recv(15)
                assert client.close_code == 1000  # normal: clients do not reconnect
            finally:
                await client.close()
            await gw.wait_idle()
            assert (await http.delete(f"/api/realtime/sessions/{sid}")).status_code == 404
            assert (await http.post("/api/realtime/nodes/other/drain")).status_code == 404
            assert (await http.post("/api/realtime/nodes/solo/drain")).status_code == 202
            assert (await http.get("/health")).status_code == 503  # draining: not ready
