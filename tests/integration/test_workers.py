"""`voxgate serve --workers N`: several processes on one port, sharing their state in Redis."""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx

from tests.support.procs import VOXGATE, clean_env, free_port, voxgate_processes, wait_http
from voxgate.client import VoxgateClient


def test_several_workers_refuse_to_start_without_a_shared_backend(tmp_path) -> None:
    env = clean_env(VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    done = subprocess.run(
        [VOXGATE, "serve", "--port", str(free_port()), "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "--workers 2 needs a shared state backend" in said
    assert "VOXGATE_REDIS_URL" in said


def test_two_workers_on_one_port_serve_sessions_in_both_processes(tmp_path, redis_url) -> None:
    port = free_port()
    env = clean_env(
        VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
        VOXGATE_REDIS_URL=redis_url,
        VOXGATE_NODE_NAME="w",
        VOXGATE_START_TIMEOUT_S="60",
    )
    base = f"http://127.0.0.1:{port}"
    with voxgate_processes(["serve", "--port", str(port), "--workers", "2"], env=env) as procs:
        wait_http(base + "/health", timeout=60)
        deadline = time.monotonic() + 60
        while True:  # both workers registered themselves
            nodes = {n["node"] for n in httpx.get(base + "/health", timeout=10).json()["nodes"]}
            if nodes == {"w-0", "w-1"}:
                break
            assert time.monotonic() < deadline, nodes
            time.sleep(0.2)
        held = asyncio.run(_sessions_until_both_workers_hold_some(base, port))
        assert held == {"w-0", "w-1"}
        procs[0].terminate()  # SIGTERM to the supervisor drains and stops every worker
        assert procs[0].wait(timeout=60) == 0


async def _sessions_until_both_workers_hold_some(base: str, port: int) -> set[str]:
    """Open sessions (the kernel picks the worker for each) until both hold at least one;
    -> the nodes the sessions API names. The kernel spreads by connection hash, so a few
    dozen connections reach both workers; the loop is bounded."""
    clients: list[VoxgateClient] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for i in range(60):
                client = await VoxgateClient(f"ws://127.0.0.1:{port}/ws").connect()
                clients.append(client)
                await client.ping(str(i))
                await client.wait_for("pong", timeout=15)
                listed = (await http.get("/api/realtime/sessions")).json()["sessions"]
                nodes = {s["node"] for s in listed}
                if len(nodes) == 2:
                    return nodes
            return nodes
    finally:
        for client in clients:
            await client.close()
