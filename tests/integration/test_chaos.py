"""Chaos: many sessions while upstream connections are killed at random.

Every session must either finish its turns or end with a clear fatal error (a code, a sentence,
close 4502); nothing may hang. Afterwards the process must be back where it started: no leaked
asyncio tasks, no leaked file descriptors, and every turn a client saw as final is stored.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.config import Settings
from voxgate.testing.faultproxy import FaultProxy
from voxgate.testing.openai_sim import OpenAISimulator

KEY = "sk-test-chaos"
SESSIONS = 8
TURNS = 3
KILLS = 6


@dataclass
class Outcome:
    index: int
    conversation_id: str | None = None
    completed_turns: int = 0
    said: list[str] = field(default_factory=list)
    finals: list[tuple[str, str]] = field(default_factory=list)  # assistant (itemId, text)
    fatal: dict[str, Any] | None = None
    close_code: int | None = None
    failed_replies: int = 0
    reconnects: int = 0


async def _converse(url: str, index: int) -> Outcome:
    outcome = Outcome(index)
    client = await VoxgateClient(url).connect()
    try:
        ready = await client.start()
        outcome.conversation_id = ready["conversationId"]
        for turn in range(TURNS):
            text = f"session {index} turn {turn}"
            for _attempt in range(KILLS + 1):  # every kill may land on this one reply
                outcome.said.append(text)
                await client.user_message(text)
                # A hang is the one unacceptable outcome: collect_reply raises TimeoutError.
                reply = await client.collect_reply(timeout=30)
                if reply.response_status == "completed":
                    assert reply.assistant_text == f"You said: {text}.", reply.assistant_text
                    outcome.completed_turns += 1
                    break
                outcome.failed_replies += 1  # the upstream died mid-reply: ask again
        await client.stop()
    except ProtocolFailure as exc:
        outcome.fatal = exc.error
        try:
            while True:
                await client.recv(10)
        except ProtocolFailure:
            pass
        outcome.close_code = client.close_code
    finally:
        outcome.finals = [
            (m["itemId"], m["text"]) for m in client.received
            if m["type"] == "transcript" and m["role"] == "assistant" and m["final"]
        ]  # fmt: skip
        outcome.reconnects = sum(
            1 for m in client.received if m["type"] == "status" and m["status"] == "reconnecting"
        )
        await client.close()
    return outcome


async def _settled(measure: Callable[[], int], baseline: int, tolerance: int) -> int:
    """The measure once it is back within `tolerance` of `baseline` (or after 15 s)."""
    value = measure()
    for _ in range(150):
        if value <= baseline + tolerance:
            return value
        await asyncio.sleep(0.1)
        value = measure()
    return value


async def test_sessions_survive_random_upstream_kills_without_leaks(
    make_settings: Callable[..., Settings], gateway_factory: Callable[..., Any]
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    process = psutil.Process()
    async with (
        OpenAISimulator(keys=[KEY], pace=3.0) as sim,
        FaultProxy("127.0.0.1", sim.port) as proxy,
    ):
        settings = make_settings(
            engine="openai", openai_api_key=KEY, openai_url=proxy.ws_url(),
            start_timeout_s=5.0, reconnect_attempts=5, reconnect_base_s=0.05,
            reconnect_max_s=0.2, openai_session_recycle_s=0.0,
        )  # fmt: skip
        async with gateway_factory(settings) as gw:
            # Warm up (store connections, thread pool, caches), then take the baseline.
            # Concurrently, so the store's connection pool reaches its working size first: a
            # pool that grows under load is not a leak.
            warm = await asyncio.gather(*(_converse(gw.ws_url, -1 - i) for i in range(SESSIONS)))
            assert all(w.completed_turns == TURNS and w.fatal is None for w in warm), warm
            await asyncio.wait_for(_wait_no_sessions(gw), 10)
            await asyncio.sleep(0.3)
            tasks_before = len(asyncio.all_tasks())
            fds_before = process.num_fds()
            sockets_before = len(process.net_connections())

            async def killer() -> list[str]:
                done = []
                await proxy.wait_for_connections(2 * SESSIONS, timeout=20)
                for k in range(KILLS):
                    await asyncio.sleep(rng.uniform(0.15, 0.45))
                    how = rng.choice(["reset", "drop"])
                    outage = k == KILLS // 2
                    if outage:
                        # A short provider outage: reconnects are reset for longer than the
                        # whole backoff schedule, so the session hit now must give up clearly,
                        # while every connection that is not hit carries on.
                        proxy.set_mode("reset", live=False)
                    if proxy.kill_random(how, rng) is not None:  # type: ignore[arg-type]
                        done.append(how + ("+outage" if outage else ""))
                    if outage:
                        await asyncio.sleep(1.5)
                        proxy.set_mode("pass")
                return done

            async with asyncio.timeout(90):
                kills = asyncio.create_task(killer())
                outcomes = await asyncio.gather(*(_converse(gw.ws_url, i) for i in range(SESSIONS)))
                killed = await kills
            context = f"seed={seed} kills={killed} outcomes={outcomes}"
            assert len(killed) >= 3, context

            for outcome in outcomes:
                if outcome.fatal is None:
                    assert outcome.completed_turns == TURNS, context
                else:
                    # A clear ending: a code, a sentence, and a close code SDKs do not loop on.
                    assert outcome.fatal["code"] in ("upstream_unavailable", "timeout"), context
                    assert len(outcome.fatal["message"]) > 20, context
                    assert outcome.close_code == 4502, context
            # The kills really hit live conversations, and clients were told.
            assert sum(o.reconnects for o in outcomes) >= 2, context

            await asyncio.wait_for(_wait_no_sessions(gw), 15)
            # No stored turn lost: every user message and every final assistant transcript a
            # client saw is in the store.
            for outcome in outcomes:
                assert outcome.conversation_id is not None, context
                record = await gw.state.store.get_conversation(outcome.conversation_id)
                assert record is not None, context
                stored = {(t.role, t.text) for t in record.turns}
                by_item = {t.item_id: t.text for t in record.turns if t.role == "assistant"}
                for text in outcome.said:
                    assert ("user", text) in stored, (text, context)
                for item_id, text in outcome.finals:
                    assert by_item.get(item_id) == text, (item_id, text, context)

            # Nothing leaked. Tasks and sockets: exact (every task has an owner that ends it,
            # every connection is closed). All file descriptors: back to the baseline with 2 of
            # slack, because the store's SQLite pool may open one more connection (the database
            # file and its WAL) under this load than under the warm-up; that is bounded by the
            # pool size, not a leak.
            tasks_after = await _settled(lambda: len(asyncio.all_tasks()), tasks_before, 0)
            fds_after = await _settled(process.num_fds, fds_before, 2)
            leftover = [t.get_name() for t in asyncio.all_tasks()]
            sockets_after = await _settled(
                lambda: len(process.net_connections()), sockets_before, 0
            )

            assert tasks_after <= tasks_before, (tasks_before, tasks_after, leftover, context)
            assert fds_after <= fds_before + 2, (fds_before, fds_after, context)
            assert sockets_after <= sockets_before, (process.net_connections(), context)
            assert proxy.connections == [], context


async def _wait_no_sessions(gw: Any) -> None:
    while gw.state.sessions:
        await asyncio.sleep(0.02)
