"""Two gateways, one Redis: they behave as one gateway.

Each gateway is the real app under the real uvicorn server on its own port, with its own
shared-state client and node id, exactly as two processes would be; they share only Redis (and
nothing else: each has its own SQLite file). Clients pick the node, so every cross-node case
is hit deterministically, not by a balancer's luck.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voxgate.client import VoxgateClient
from voxgate.config import Settings

SECRET = "cluster-test-jwt-secret-0123456789abcdef"


def user_token(sub: str, admin: bool = False) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 600}
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refusal(url: str, token: str) -> tuple[dict[str, Any], int | None]:
    async with connect(url, open_timeout=15, additional_headers=bearer(token)) as ws:
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 15)
        return error, ws.close_code


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


@pytest.fixture
async def cluster(
    tmp_path: Path, redis_url: str, gateway_factory: Callable[..., Any]
) -> AsyncIterator[Callable[..., Any]]:
    """`await cluster(n, **settings)` -> n gateways sharing the test's Redis."""
    async with AsyncExitStack() as stack:

        async def start(n: int = 2, **overrides: Any) -> list[Any]:
            gateways = []
            for i in range(n):
                base: dict[str, Any] = {
                    "host": "127.0.0.1",
                    "port": 0,
                    "database_url": f"sqlite+aiosqlite:///{tmp_path / f'node{i}.db'}",
                    "shutdown_deadline_s": 5.0,
                    "auth": "jwt",
                    "jwt_secret": SECRET,
                    "redis_url": redis_url,
                    "node_name": f"node-{i}",
                    "start_timeout_s": 60.0,
                }
                base.update(overrides)
                settings = Settings(_env_file=None, **base)  # type: ignore[call-arg]
                gateways.append(await stack.enter_async_context(gateway_factory(settings)))
            return gateways

        yield start


async def _mint(gw: Any, user: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=15) as http:
        reply = await http.post("/api/realtime/session", headers=bearer(user_token(user)))
        assert reply.status_code == 200, reply.text
        return reply.json()


async def test_a_token_minted_on_one_node_opens_one_session_on_any_node(cluster) -> None:
    a, b = await cluster(2)
    minted = await _mint(a, "alice")
    async with VoxgateClient(b.ws_url, minted["token"]) as client:
        await client.ping("p")
        assert (await client.wait_for("pong", timeout=15))["id"] == "p"
        assert minted["sessionId"] in b.state.sessions  # the id the token promised
    for node in (a, b):
        error, code = await refusal(node.ws_url, minted["token"])
        assert code == 4401 and "already used" in error["message"]


async def test_twenty_connects_race_for_one_token_and_exactly_one_wins(cluster) -> None:
    a, b = await cluster(2)
    token = (await _mint(a, "alice"))["token"]

    async def attempt(i: int) -> str:
        node = (a, b)[i % 2]
        async with connect(node.ws_url, open_timeout=30, additional_headers=bearer(token)) as ws:
            # A loser may be refused (error, then close) before its ping goes out.
            with contextlib.suppress(ConnectionClosed):
                await ws.send(orjson.dumps({"type": "ping", "id": str(i)}).decode())
            try:
                first = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            except ConnectionClosed:
                assert ws.close_code == 4401
                return "refused"
            if first["type"] == "pong":
                return "won"
            assert first["type"] == "error" and first["code"] == "unauthorized", first
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
            assert ws.close_code == 4401
            return "refused"

    results = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert results.count("won") == 1 and results.count("refused") == 19


async def test_the_per_user_cap_holds_across_nodes(cluster) -> None:
    a, b = await cluster(2)
    alice = user_token("alice")
    clients = [
        await VoxgateClient(node.ws_url, alice).connect() for node in (a, b, a)
    ]
    try:
        for node in (a, b):
            error, code = await refusal(node.ws_url, alice)
            assert code == 4429 and error["code"] == "session_limit"
            assert "3 open sessions" in error["message"]
        # bob is not affected; and closing one of alice's sessions frees a slot everywhere.
        async with VoxgateClient(b.ws_url, user_token("bob")) as bob:
            await bob.ping("b")
            assert (await bob.wait_for("pong", timeout=15))["id"] == "b"
        await clients.pop(0).close()  # on node a

        async def b_admits_alice() -> bool:
            try:
                async with VoxgateClient(b.ws_url, alice) as again:
                    await again.ping("a")
                    await again.wait_for("pong", timeout=15)
                    return True
            except Exception:
                return False

        await eventually(b_admits_alice)
    finally:
        for client in clients:
            await client.close()


async def test_the_token_request_rate_limit_is_global(cluster) -> None:
    a, b = await cluster(2, token_requests_per_min=3)
    statuses = []
    for node in (a, b, a, b):
        async with httpx.AsyncClient(base_url=node.http_url, timeout=15) as http:
            reply = await http.post("/api/realtime/session", headers=bearer(user_token("carol")))
            statuses.append(reply.status_code)
            if reply.status_code == 429:
                assert int(reply.headers["Retry-After"]) >= 1
                assert "3 per minute" in reply.json()["detail"]
    assert statuses == [200, 200, 200, 429]


async def test_sessions_api_lists_every_node_and_an_admin_ends_one_anywhere(cluster) -> None:
    a, b = await cluster(2)
    on_a = await VoxgateClient(a.ws_url, user_token("dora")).connect()
    on_b = await VoxgateClient(b.ws_url, user_token("emil")).connect()
    admin = bearer(user_token("root", admin=True))
    try:
        async with httpx.AsyncClient(base_url=a.http_url, timeout=15, headers=admin) as http:

            async def both_listed() -> bool:
                listed = (await http.get("/api/realtime/sessions")).json()["sessions"]
                return {(s["userId"], s["node"]) for s in listed} == {
                    ("dora", "node-0"), ("emil", "node-1"),
                }  # fmt: skip

            await eventually(both_listed)
            b_id = next(iter(b.state.sessions))
            one = await http.get(f"/api/realtime/sessions/{b_id}")
            assert one.status_code == 200 and one.json()["node"] == "node-1"
            health = (await http.get("/health")).json()
            assert {n["node"] for n in health["nodes"]} == {"node-0", "node-1"}
            assert health["shared"] == {"kind": "redis", "status": "ok"}

            # The admin asks node a; the session lives on node b.
            ended = await http.delete(f"/api/realtime/sessions/{b_id}")
            assert ended.status_code == 202, ended.text
            status = await on_b.wait_for("status", timeout=20)
            assert status["status"] == "disconnected" and status["reason"] == "ended_by_admin"
            await eventually(lambda: _gone(b, b_id))

            async def delisted() -> bool:
                listed = (await http.get("/api/realtime/sessions")).json()["sessions"]
                return [s["userId"] for s in listed] == ["dora"]

            await eventually(delisted)
            missing = await http.delete(f"/api/realtime/sessions/{b_id}")
            assert missing.status_code == 404
            status_body = (await http.get("/ws/status")).json()
            assert status_body["cluster"]["nodes"] == 2 and status_body["node"] == "node-0"
    finally:
        await on_a.close()
        await on_b.close()


async def _gone(gw: Any, session_id: str) -> bool:
    return session_id not in gw.state.sessions


def _single(tmp_path: Path, redis_url: str, **extra: Any) -> Settings:
    """One gateway on `redis_url` (`extra` overrides: a node name and a database per node
    make several)."""
    base: dict[str, Any] = dict(
        host="127.0.0.1", port=0, shutdown_deadline_s=5.0,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'one.db'}",
        auth="jwt", jwt_secret=SECRET, redis_url=redis_url, start_timeout_s=120.0,
        max_sessions_per_user=30,
    )  # fmt: skip
    base.update(extra)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


async def _all_talk(clients: list[VoxgateClient], tag: str) -> None:
    for i, client in enumerate(clients):
        await client.ping(f"{tag}{i}")
    for i, client in enumerate(clients):
        assert (await client.wait_for("pong", timeout=30))["id"] == f"{tag}{i}"


async def _admits(gw: Any, user: str) -> bool:
    try:
        async with VoxgateClient(gw.ws_url, user_token(user)) as again:
            await again.ping("g")
            await again.wait_for("pong", timeout=15)
            return True
    except Exception:
        return False


async def test_redis_away_for_seconds_under_twenty_live_sessions(
    tmp_path: Path, redis_factory: Callable[[], Any], gateway_factory: Callable[..., Any]
) -> None:
    """Redis stops for five seconds under two nodes holding ten live sessions each: none of the
    twenty drops, new admissions on either node get the clear error (4503 / 503), and after
    Redis returns both nodes admit again, with no restart."""
    server = redis_factory()
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(gateway_factory(_single(
                tmp_path, server.url, node_name=f"node-{i}",
                database_url=f"sqlite+aiosqlite:///{tmp_path / f'node{i}.db'}",
            )))  # fmt: skip
            for i in range(2)
        ]
        live = [
            await VoxgateClient(nodes[i % 2].ws_url, user_token("fay")).connect() for i in range(20)
        ]
        try:
            await _all_talk(live, "before")
            server.stop()
            away_since = time.monotonic()
            for gw in nodes:
                error, code = await refusal(gw.ws_url, user_token("gus"))
                assert code == 4503 and "Redis" in error["message"]
                async with httpx.AsyncClient(base_url=gw.http_url, timeout=15) as http:
                    minted = await http.post(
                        "/api/realtime/session", headers=bearer(user_token("gus"))
                    )
                    assert minted.status_code == 503 and "Redis" in minted.json()["detail"]
                    health = await http.get("/health")
                    assert health.status_code == 200  # still ready: live sessions need no Redis
                    assert health.json()["shared"]["status"] == "error"
            # The live sessions keep talking while Redis is away.
            while time.monotonic() - away_since < 5.0:
                await _all_talk(live, "away")
                await asyncio.sleep(0.5)
            server.start()
            for gw in nodes:
                await eventually(lambda gw=gw: _admits(gw, "gus"), timeout=40)
            await _all_talk(live, "after")
            assert [len(gw.state.sessions) for gw in nodes] == [10, 10]
        finally:
            for client in live:
                await client.close()


async def test_fail_open_admits_while_redis_is_away(
    tmp_path: Path, redis_factory: Callable[[], Any], gateway_factory: Callable[..., Any]
) -> None:
    server = redis_factory()
    settings = _single(tmp_path, server.url, redis_fail_open=True)
    async with gateway_factory(settings) as gw:
        server.stop()
        async with VoxgateClient(gw.ws_url, user_token("ola")) as client:
            await client.ping("o")
            assert (await client.wait_for("pong", timeout=15))["id"] == "o"
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=15) as http:
            # A session token can never be known single-use without Redis: still refused.
            minted = await http.post("/api/realtime/session", headers=bearer(user_token("ola")))
            assert minted.status_code == 503


async def test_an_admin_drains_another_node(cluster) -> None:
    a, b = await cluster(2)
    on_b = await VoxgateClient(b.ws_url, user_token("hugo")).connect()
    admin = bearer(user_token("root", admin=True))
    try:
        await on_b.ping("h")
        await on_b.wait_for("pong", timeout=15)
        async with httpx.AsyncClient(base_url=a.http_url, timeout=15, headers=admin) as http:
            unknown = await http.post("/api/realtime/nodes/no-such-node/drain")
            assert unknown.status_code == 404
            drained = await http.post("/api/realtime/nodes/node-1/drain")
            assert drained.status_code == 202, drained.text
            # b's client is told to reconnect elsewhere, as on SIGTERM.
            status = await on_b.wait_for("status", timeout=20)
            assert status["status"] == "disconnected" and status["reason"] == "server_shutdown"
            with pytest.raises(Exception):  # noqa: B017 - the close, whichever form it takes
                while True:
                    await on_b.recv(15)
            assert on_b.close_code == 1001
            # b no longer admits and says so to the balancer; a still does.
            assert (await http.get(b.http_url + "/health")).status_code == 503
            error, code = await refusal(b.ws_url, user_token("hugo"))
            assert code == 1001
            async with VoxgateClient(a.ws_url, user_token("hugo")) as elsewhere:
                await elsewhere.ping("e")
                assert (await elsewhere.wait_for("pong", timeout=15))["id"] == "e"

            async def b_marked_draining() -> bool:
                nodes = (await http.get("/health")).json()["nodes"]
                return any(n["node"] == "node-1" and n["draining"] for n in nodes)

            await eventually(b_marked_draining)
    finally:
        await on_b.close()
