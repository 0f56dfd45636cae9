"""MCP servers as tool sources, through the official `mcp` SDK: the shipped example server
(examples/tools/mcp_server.py) over stdio and over streamable HTTP, its tools listed at startup
and called through the gateway; a server that is down, or dies in the middle of a call, gives
the model an error result and the conversation goes on."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import free_port
from voxgate.client import VoxgateClient
from voxgate.testing.openai_sim import OpenAISimulator, ToolTrigger

KEY = "sk-mcp-tools"
SERVER = Path(__file__).resolve().parents[2] / "examples" / "tools" / "mcp_server.py"
STDIO = f"{sys.executable} {SERVER}"
TRIGGERS = [
    ToolTrigger.one("define gateway", "define", {"word": "gateway"}),
    ToolTrigger.one("define nonsense", "define", {"word": "zyx"}),
    ToolTrigger.one("add them", "add_numbers", {"a": 2, "b": 40}),
    ToolTrigger.one("crash it", "crash", {}),
]


@asynccontextmanager
async def gateway(make_settings: Any, gateway_factory: Any, servers: list[str]) -> AsyncIterator[Any]:
    async with OpenAISimulator(keys=[KEY], pace=8.0, tool_triggers=TRIGGERS) as sim:
        settings = make_settings(engine="openai", openai_api_key=KEY, openai_url=sim.url,
                                 mcp_servers=servers, start_timeout_s=30.0,
                                 # Starting a stdio server again takes a while on a loaded
                                 # machine; no filler may come between a call and its answer.
                                 tool_timeout_s=60.0, tool_filler_ms=0)  # fmt: skip
        async with gateway_factory(settings) as gw:
            yield gw


async def ask(client: VoxgateClient, words: str) -> tuple[str, str]:
    """-> (how the call ended, the answer the model gave)."""
    await client.user_message(words)
    reply = await client.collect_reply(timeout=60)
    ended = [m for m in reply.tool_statuses if m["status"] != "running"]
    assert len(ended) == 1, reply.tool_statuses
    return ended[0]["status"] + ": " + ended[0].get("error", ""), reply.assistant_text


async def test_a_stdio_mcp_server_and_one_that_dies_mid_call(make_settings: Any, gateway_factory: Any) -> None:
    async with gateway(make_settings, gateway_factory, [STDIO]) as gw, VoxgateClient(gw.ws_url) as client:
        ready = await client.start()
        assert {"define", "add_numbers", "crash"} <= set(ready["tools"])
        status, answer = await ask(client, "define gateway please")
        assert status == "done: " and "a point where one network meets another" in answer
        status, answer = await ask(client, "define nonsense")
        assert status.startswith("error") and "no definition of 'zyx'" in answer
        # The server process ends in the middle of the call.
        status, answer = await ask(client, "crash it")
        assert status.startswith("error") and "failed during the call" in answer
        # The next call starts the server again.
        status, answer = await ask(client, "add them")
        assert status == "done: " and "42" in answer


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = asyncio.get_event_loop().time() + timeout
    while asyncio.get_event_loop().time() < deadline:
        assert proc.poll() is None, "the MCP server exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        import time

        time.sleep(0.1)
    raise TimeoutError(f"the MCP server did not listen on {port}")


@contextlib.contextmanager
def http_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "--http", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(port, proc)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_a_streamable_http_mcp_server_and_one_that_goes_down(make_settings: Any, gateway_factory: Any) -> None:
    with http_server() as (url, proc):
        async with gateway(make_settings, gateway_factory, [url]) as gw, VoxgateClient(gw.ws_url) as client:
            ready = await client.start()
            assert "add_numbers" in ready["tools"]
            status, answer = await ask(client, "add them")
            assert status == "done: " and "42" in answer
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)
            status, answer = await ask(client, "add them")
            assert status.startswith("error"), status
            await client.user_message("hello")
            assert (await client.collect_reply(timeout=60)).assistant_text == "You said: hello."


async def test_an_mcp_server_down_at_startup_leaves_the_gateway_serving(
    make_settings: Any, gateway_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    async with gateway(make_settings, gateway_factory, [url, STDIO]) as gw, VoxgateClient(gw.ws_url) as client:
        ready = await client.start()
        assert "define" in ready["tools"]  # the stdio server's tools are there
        status, _ = await ask(client, "define gateway")
        assert status == "done: "
    assert any("is unavailable" in r.getMessage() and url in r.getMessage() for r in caplog.records)
