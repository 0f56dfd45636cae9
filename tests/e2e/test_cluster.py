"""Three (or two) `voxgate serve` processes behind HAProxy (`deploy/haproxy.cfg`), one Redis, one
PostgreSQL: the cluster behaves as one gateway, and a node that dies loses no finished turn.

Clients only ever talk to the balancer, as in production; which node served what is read back
from the sessions API (each session names its `node`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.cluster import Cluster, running_cluster
from tests.support.postgres import PgServer
from tests.support.redis import RedisServer
from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.testing.openai_sim import OpenAISimulator

SECRET = "cluster-e2e-test-jwt-secret-0123456789abcdef"
OPENAI_KEY = "sk-test-cluster-key-0123456789"


def user_token(sub: str, admin: bool = False) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 900}
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def backing_services(pg_server: PgServer) -> Iterator[tuple[str, str]]:
    """A private Redis and a fresh PostgreSQL database -> (redis URL, database URL)."""
    redis = RedisServer()
    redis.start()
    name = asyncio.run(pg_server.create_database())
    try:
        yield redis.url, pg_server.url(name)
    finally:
        redis.remove()
        asyncio.run(pg_server.drop_database(name))


@contextlib.asynccontextmanager
async def backing_services_async(pg_server: PgServer) -> AsyncIterator[tuple[str, str]]:
    """`backing_services` for a test already inside an event loop."""
    redis = RedisServer()
    redis.start()
    name = await pg_server.create_database()
    try:
        yield redis.url, pg_server.url(name)
    finally:
        redis.remove()
        await pg_server.drop_database(name)


def cluster_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "VOXGATE_AUTH": "jwt",
        "VOXGATE_JWT_SECRET": SECRET,
        "VOXGATE_REDIS_URL": redis_url,
        "VOXGATE_DATABASE_URL": database_url,
        "VOXGATE_START_TIMEOUT_S": "60",
        "VOXGATE_SHUTDOWN_DEADLINE_S": "5",
        **extra,
    }


@pytest.fixture(scope="module")
def three_nodes(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with backing_services(pg_server) as (redis_url, database_url):
        env = cluster_env(redis_url, database_url, VOXGATE_TOKEN_REQUESTS_PER_MIN="5")
        with running_cluster(tmp_path_factory.mktemp("cluster"), 3, **env) as cluster:
            yield cluster


async def _sessions(cluster: Cluster) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=cluster.url, timeout=15) as http:
        reply = await http.get("/api/realtime/sessions", headers=bearer(user_token("root", True)))
        assert reply.status_code == 200, reply.text
        return list(reply.json()["sessions"])


async def _mint(cluster: Cluster, user: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=cluster.url, timeout=15) as http:
        return await http.post("/api/realtime/session", headers=bearer(user_token(user)))


async def _refusal(url: str, token: str) -> tuple[dict[str, Any], int | None]:
    async with connect(url, open_timeout=30, additional_headers=bearer(token)) as ws:
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
        return error, ws.close_code


async def _eventually(check: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


def test_the_registry_lists_every_node_through_the_balancer(three_nodes: Cluster) -> None:
    health = httpx.get(three_nodes.url + "/health", timeout=15).json()
    assert {n["node"] for n in health["nodes"]} == {"gw1", "gw2", "gw3"}
    assert health["shared"] == {"kind": "redis", "status": "ok"}


async def test_one_token_twenty_connects_through_the_balancer_one_winner(
    three_nodes: Cluster,
) -> None:
    minted = await _mint(three_nodes, "tokyo")
    assert minted.status_code == 200, minted.text
    token = minted.json()["token"]

    async def attempt(i: int) -> str:
        async with connect(
            three_nodes.ws_url, open_timeout=30, additional_headers=bearer(token)
        ) as ws:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(orjson.dumps({"type": "ping", "id": str(i)}).decode())
            try:
                first = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            except ConnectionClosed:
                assert ws.close_code == 4401
                return "refused"
            if first["type"] == "pong":
                return "won"
            assert first["code"] == "unauthorized", first
            return "refused"

    results = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert results.count("won") == 1 and results.count("refused") == 19


async def test_the_per_user_cap_holds_across_nodes(three_nodes: Cluster) -> None:
    alice = user_token("alice")
    clients = []
    try:
        for i in range(3):
            client = await VoxgateClient(three_nodes.ws_url, alice, open_timeout=30).connect()
            clients.append(client)
            await client.ping(str(i))
            await client.wait_for("pong", timeout=30)
        mine = [s for s in await _sessions(three_nodes) if s["userId"] == "alice"]
        assert len(mine) == 3 and len({s["node"] for s in mine}) >= 2  # spread over nodes
        for _ in range(3):  # the 4th is refused wherever it lands
            error, code = await _refusal(three_nodes.ws_url, alice)
            assert code == 4429 and "3 open sessions" in error["message"]
    finally:
        for client in clients:
            await client.close()


async def test_the_token_request_rate_limit_is_global(three_nodes: Cluster) -> None:
    statuses = [(await _mint(three_nodes, "rita")).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]


async def test_sessions_api_lists_all_nodes_and_an_admin_ends_one_on_another(
    three_nodes: Cluster,
) -> None:
    clients = [
        await VoxgateClient(three_nodes.ws_url, user_token(f"u{i}"), open_timeout=30).connect()
        for i in range(3)
    ]
    try:
        for i, client in enumerate(clients):
            await client.ping(str(i))
            await client.wait_for("pong", timeout=30)

        async def all_listed() -> bool:
            users = {s["userId"]: s["node"] for s in await _sessions(three_nodes)}
            return {"u0", "u1", "u2"} <= set(users)

        await _eventually(all_listed)
        listed = {s["userId"]: s for s in await _sessions(three_nodes)}
        assert len({listed[f"u{i}"]["node"] for i in range(3)}) >= 2
        # Ask each node directly to end a session another node holds.
        target = listed["u1"]
        asker = next(i for i in range(3) if three_nodes.name(i) != target["node"])
        async with httpx.AsyncClient(base_url=three_nodes.node_url(asker), timeout=15) as http:
            ended = await http.delete(
                f"/api/realtime/sessions/{target['sessionId']}",
                headers=bearer(user_token("root", True)),
            )
        assert ended.status_code == 202, ended.text
        status = await clients[1].wait_for("status", timeout=30)
        assert status["status"] == "disconnected" and status["reason"] == "ended_by_admin"

        async def delisted() -> bool:
            return all(s["userId"] != "u1" for s in await _sessions(three_nodes))

        await _eventually(delisted)
    finally:
        for client in clients:
            await client.close()


async def test_a_sigkilled_node_loses_no_turn_and_its_client_continues_elsewhere(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """The node holding a live conversation is SIGKILLed: every finished turn is in
    PostgreSQL, the user's session slot on the dead node lapses (cap 1 here, so the reconnect
    waits for it), and the client reconnects through the balancer with its conversationId to
    the other node, which restores the earlier turns to the provider."""
    async with OpenAISimulator(keys={OPENAI_KEY}, pace=8.0) as sim:
        async with backing_services_async(pg_server) as (redis_url, database_url):
            env = cluster_env(
                redis_url, database_url,
                VOXGATE_ENGINE="openai", OPENAI_API_KEY=OPENAI_KEY,
                VOXGATE_OPENAI_URL=sim.url, VOXGATE_OPENAI_API_BASE=sim.api_base,
                VOXGATE_MAX_SESSIONS_PER_USER="1",
            )  # fmt: skip
            with running_cluster(tmp_path, 2, **env) as cluster:
                await _kill_and_resume(cluster, sim)


async def _kill_and_resume(cluster: Cluster, sim: OpenAISimulator) -> None:
    kim = user_token("kim")
    client = await VoxgateClient(cluster.ws_url, kim, open_timeout=30).connect()
    try:
        ready = await client.start(timeout=60)
        conversation = ready["conversationId"]
        for text in ("first question", "second question"):
            await client.user_message(text)
            await client.collect_reply(timeout=60)
        holder = next(s["node"] for s in await _sessions(cluster) if s["userId"] == "kim")
        await asyncio.to_thread(cluster.kill_node, cluster.index_of(holder))
        with pytest.raises((ProtocolFailure, TimeoutError)):
            while True:
                await client.recv(30)
    finally:
        await client.close()

    async with httpx.AsyncClient(base_url=cluster.url, timeout=15) as http:
        stored = (await http.get(f"/api/conversations/{conversation}", headers=bearer(kim))).json()
    turns = [(t["role"], t["text"]) for t in stored["turns"]]
    assert turns == [
        ("user", "first question"), ("assistant", "You said: first question."),
        ("user", "second question"), ("assistant", "You said: second question."),
    ]  # fmt: skip

    # The dead node's lease on kim's only slot lapses (within 15 s); until then the survivor
    # refuses kim with the per-user limit, not forever.
    killed_at = time.monotonic()
    again: VoxgateClient | None = None
    while again is None:
        assert time.monotonic() - killed_at < 45, "the dead node's lease never lapsed"
        attempt = await VoxgateClient(cluster.ws_url, kim, open_timeout=30).connect()
        try:
            resumed = await attempt.start(timeout=60, conversationId=conversation)
            again = attempt
        except ProtocolFailure as exc:
            await attempt.close()
            assert exc.error is not None and exc.error["code"] == "session_limit", exc
            await asyncio.sleep(0.5)
    try:
        assert resumed["conversationId"] == conversation
        survivor = next(s["node"] for s in await _sessions(cluster) if s["userId"] == "kim")
        assert survivor != holder
        # The new upstream was given the earlier turns: the assistant remembers them.
        restored = json.dumps(sim.accepted[-1].items)
        assert "first question" in restored and "You said: second question." in restored
        await again.user_message("third question")
        reply = await again.collect_reply(timeout=60)
        assert reply.assistant_text == "You said: third question."
    finally:
        await again.close()


@pytest.mark.parametrize("how", ["sigterm", "admin"])
async def test_a_drained_node_sends_its_client_elsewhere_and_exits(
    how: str, pg_server: PgServer, tmp_path: Path
) -> None:
    """SIGTERM, or an admin's drain call through the balancer: the node holding a live
    conversation tells its client `server_shutdown` (close 1001), writes every finished turn,
    and exits within its deadline; the client reconnects through the balancer with its
    conversationId and the other node continues the conversation."""
    async with OpenAISimulator(keys={OPENAI_KEY}, pace=8.0) as sim:
        async with backing_services_async(pg_server) as (redis_url, database_url):
            env = cluster_env(
                redis_url, database_url,
                VOXGATE_ENGINE="openai", OPENAI_API_KEY=OPENAI_KEY,
                VOXGATE_OPENAI_URL=sim.url, VOXGATE_OPENAI_API_BASE=sim.api_base,
            )  # fmt: skip
            with running_cluster(tmp_path, 2, **env) as cluster:
                await _drain_and_resume(cluster, sim, how)


async def _drain_and_resume(cluster: Cluster, sim: OpenAISimulator, how: str) -> None:
    lena = user_token("lena")
    client = await VoxgateClient(cluster.ws_url, lena, open_timeout=30).connect()
    try:
        ready = await client.start(timeout=60)
        conversation = ready["conversationId"]
        await client.user_message("before the drain")
        await client.collect_reply(timeout=60)
        holder = next(s["node"] for s in await _sessions(cluster) if s["userId"] == "lena")
        index = cluster.index_of(holder)
        proc = cluster.nodes[index]
        assert proc is not None
        drained_at = time.monotonic()
        if how == "sigterm":
            proc.terminate()
        else:
            async with httpx.AsyncClient(base_url=cluster.url, timeout=15) as http:
                reply = await http.post(
                    f"/api/realtime/nodes/{holder}/drain", headers=bearer(user_token("root", True))
                )
                assert reply.status_code == 202, reply.text
        status = await client.wait_for("status", timeout=30)
        assert status["status"] == "disconnected" and status["reason"] == "server_shutdown"
        with pytest.raises(ProtocolFailure):
            while True:
                await client.recv(30)
        assert client.close_code == 1001
    finally:
        await client.close()
    # The drained node exits within its deadline (5 s), with margin for a loaded machine.
    code = await asyncio.to_thread(proc.wait, 30)
    assert time.monotonic() - drained_at < 5 + 15, "the drained node did not exit in time"
    assert code in (0, -15, 143), code  # uvicorn re-raises the SIGTERM it handled
    cluster.nodes[index] = None

    again = await VoxgateClient(cluster.ws_url, lena, open_timeout=30).connect()
    try:
        resumed = await again.start(timeout=60, conversationId=conversation)
        assert resumed["conversationId"] == conversation
        survivor = next(s["node"] for s in await _sessions(cluster) if s["userId"] == "lena")
        assert survivor != holder
        assert "You said: before the drain." in json.dumps(sim.accepted[-1].items)
        await again.user_message("after the drain")
        assert (await again.collect_reply(timeout=60)).assistant_text == "You said: after the drain."
    finally:
        await again.close()
    async with httpx.AsyncClient(base_url=cluster.url, timeout=15) as http:
        stored = (await http.get(f"/api/conversations/{conversation}", headers=bearer(lena))).json()
    texts = [t["text"] for t in stored["turns"]]
    assert texts[:2] == ["before the drain", "You said: before the drain."]


async def test_the_python_client_follows_a_drain_to_another_node_by_itself(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """`VoxgateClient(follow_drain=True)`: the node holding the conversation drains, and the
    client, with no help from its caller, connects again through the balancer at once and
    resumes; its reader sees `status: disconnected` (`server_shutdown`), then the new
    `session_ready` with the same conversation, and the conversation goes on."""
    async with OpenAISimulator(keys={OPENAI_KEY}, pace=8.0) as sim:
        async with backing_services_async(pg_server) as (redis_url, database_url):
            env = cluster_env(
                redis_url, database_url,
                VOXGATE_ENGINE="openai", OPENAI_API_KEY=OPENAI_KEY,
                VOXGATE_OPENAI_URL=sim.url, VOXGATE_OPENAI_API_BASE=sim.api_base,
            )  # fmt: skip
            with running_cluster(tmp_path, 2, **env) as cluster:
                minted: list[str] = []

                def token() -> str:  # called before every connection
                    minted.append(user_token("mira"))
                    return minted[-1]

                client = VoxgateClient(cluster.ws_url, token, open_timeout=30, follow_drain=True)
                await client.connect()
                try:
                    ready = await client.start(timeout=60, binary=True)
                    conversation = ready["conversationId"]
                    await client.user_message("before the drain")
                    await client.collect_reply(timeout=60)
                    holder = next(s["node"] for s in await _sessions(cluster) if s["userId"] == "mira")
                    async with httpx.AsyncClient(base_url=cluster.url, timeout=15) as http:
                        reply = await http.post(
                            f"/api/realtime/nodes/{holder}/drain",
                            headers=bearer(user_token("root", True)),
                        )
                        assert reply.status_code == 202, reply.text
                    status = await client.wait_for("status", timeout=30, where=lambda m: m["status"] == "disconnected")
                    assert status["reason"] == "server_shutdown"
                    resumed = await client.wait_for(
                        "session_ready", timeout=60, where=lambda m: m is not ready
                    )
                    assert resumed["conversationId"] == conversation
                    assert client.resumes == 1 and len(minted) == 2
                    assert client.session is resumed and client.binary
                    survivor = next(s["node"] for s in await _sessions(cluster) if s["userId"] == "mira")
                    assert survivor != holder
                    assert "You said: before the drain." in json.dumps(sim.accepted[-1].items)
                    await client.user_message("after the drain")
                    answer = await client.collect_reply(timeout=60)
                    assert answer.assistant_text == "You said: after the drain."
                finally:
                    await client.close()
