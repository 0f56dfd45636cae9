"""The page at `/` in real Chromium, through HAProxy to two voxgate processes on one Redis and one
PostgreSQL: when the process holding its conversation drains, the page reconnects through the
balancer at once (the client's drain fast path); when it is SIGKILLed, through its ordinary
reconnect. Either way it lands on the other process and the conversation goes on with its
earlier turns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.browser import PageSession, ServerProcess
from tests.support.cluster import Cluster, running_cluster
from tests.support.postgres import PgServer
from tests.support.redis import RedisServer

pytestmark = pytest.mark.browser

TRANSCRIPT = '[data-testid="transcript"]'
ASSISTANT_FINAL = f'{TRANSCRIPT} [data-role="assistant"][data-final="true"] .text'


def _run(coroutine: Coroutine[object, object, object]) -> object:
    """Run `coroutine` to the end in a thread of its own (Playwright's sync API owns this
    thread's event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture
def two_nodes(
    tmp_path: Path, pg_server: PgServer, openai_sim: ServerProcess
) -> Iterator[Cluster]:
    redis = RedisServer()
    redis.start()
    database = str(_run(pg_server.create_database()))
    env = {
        "VOXGATE_REDIS_URL": redis.url,
        "VOXGATE_DATABASE_URL": pg_server.url(database),
        "VOXGATE_ENGINE": "openai",
        "OPENAI_API_KEY": "sk-browser",
        "VOXGATE_OPENAI_URL": f"ws://127.0.0.1:{openai_sim.port}/v1/realtime",
        "VOXGATE_START_TIMEOUT_S": "60",
        "VOXGATE_SHUTDOWN_DEADLINE_S": "5",
    }
    try:
        with running_cluster(tmp_path, 2, **env) as cluster:
            yield cluster
    finally:
        redis.remove()
        _run(pg_server.drop_database(database))


def _holder(cluster: Cluster) -> str:
    sessions = httpx.get(f"{cluster.url}/api/realtime/sessions", timeout=15).json()["sessions"]
    assert len(sessions) == 1, sessions
    return str(sessions[0]["node"])


@pytest.mark.parametrize("how", ["drain", "sigkill"])
def test_the_page_moves_to_the_other_node_and_resumes(
    how: str, open_page, two_nodes: Cluster
) -> None:
    """A drain (the admin call) or a SIGKILL of the node holding the page's conversation."""
    cluster = two_nodes
    ps: PageSession = open_page(cluster.url)
    page = ps.page
    # Typing while disconnected opens a session without the microphone.
    page.fill('[data-testid="text-input"]', "before the drain")
    page.click('[data-testid="send"]')
    expect(page.locator(ASSISTANT_FINAL).first).to_contain_text(
        "You said: before the drain", timeout=60_000
    )
    conversation = ps.debug("d.client.conversationId")
    holder = _holder(cluster)

    page.evaluate(
        "() => { window.retries = [];"
        " window.voxgateDebug.client.on(e => { if (e.type === 'reconnecting') window.retries.push(e); }); }"
    )
    if how == "drain":
        reply = httpx.post(f"{cluster.url}/api/realtime/nodes/{holder}/drain", timeout=15)
        assert reply.status_code == 202, reply.text
    else:
        cluster.kill_node(cluster.index_of(holder))

    page.wait_for_function("() => window.retries.length > 0", timeout=30_000)
    first = page.evaluate("window.retries[0]")
    if how == "drain":
        # The page heard the drain and went back at once: its first attempt waited at most
        # the drain jitter (250 ms), not the 0.5 to 1 s of its usual backoff.
        assert first["attempt"] == 1 and first["delayMs"] <= 250, first
    else:
        # No goodbye from a killed node: the ordinary jittered backoff (0.5 to 1 s first).
        assert first["attempt"] == 1 and 500 <= first["delayMs"] <= 1000, first
    ps.wait_for("d.client.status === 'connected' && d.client.debug.reconnects >= 1", 60_000)
    assert ps.debug("d.client.conversationId") == conversation
    # On the other node now (a killed node's entry may linger until its lease lapses).
    sessions = httpx.get(f"{cluster.url}/api/realtime/sessions", timeout=15).json()["sessions"]
    assert [s for s in sessions if s["node"] != holder], sessions

    # The conversation goes on there, with what was said before.
    page.fill('[data-testid="text-input"]', "after the drain")
    page.click('[data-testid="send"]')
    expect(page.locator(ASSISTANT_FINAL).last).to_contain_text(
        "You said: after the drain", timeout=60_000
    )
    turns = httpx.get(f"{cluster.url}/api/conversations/{conversation}", timeout=15).json()
    said = [t["text"] for t in turns["turns"] if t["role"] == "user"]
    assert said == ["before the drain", "after the drain"], turns
    assert ps.errors == []
