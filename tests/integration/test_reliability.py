"""Reliability by fault injection: the network, the provider and the client misbehave;
the conversation survives or ends with a clear sentence, and no finished turn is lost.

Topology in every test: client -> gateway (in this loop) -> `FaultProxy` -> OpenAI simulator.
The proxy breaks TCP (drop, reset, blackhole, refuse); the simulator breaks the protocol (HTTP
500 at the handshake, error events, invalid key). Backoffs are shortened through settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.config import Settings
from voxgate.engines.upstream import ReconnectPolicy
from voxgate.gateway.limits import CircuitBreaker
from voxgate.testing.faultproxy import FaultProxy
from voxgate.testing.openai_sim import OpenAISimulator, default_response

KEY = "sk-test-reliability"
LONG = "please read this long sentence aloud so that the reply lasts for several seconds at least"


def _texts(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        for part in item.get("content") or []:
            text = part.get("text") or part.get("transcript")
            if text and item.get("role") in ("user", "assistant"):
                out.append((item["role"], text))
    return out


def remembering(items: list[dict[str, Any]]) -> str:
    """Answers "what is my name" only from what is in the upstream conversation: the proof that
    a replay after a reconnect restored the context."""
    said = _texts(items)
    if said and said[-1][0] == "user" and "what is my name" in said[-1][1].lower():
        told = any(role == "user" and "my name is ada" in text.lower() for role, text in said[:-1])
        return "Your name is Ada." if told else "I do not know your name."
    return default_response(items=items)


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(keys=[KEY], pace=6.0, responder=remembering) as s:
        yield s


@pytest.fixture
async def proxy(sim: OpenAISimulator) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", sim.port) as p:
        yield p


@pytest.fixture
def settings(make_settings: Callable[..., Settings], proxy: FaultProxy) -> Callable[..., Settings]:
    def factory(**kw: Any) -> Settings:
        base: dict[str, Any] = {
            "engine": "openai",
            "openai_api_key": KEY,
            "openai_url": proxy.ws_url("/v1/realtime"),
            "start_timeout_s": 5.0,
            "reconnect_attempts": 5,
            "reconnect_base_s": 0.05,
            "reconnect_max_s": 0.2,
            "breaker_cooldown_s": 30.0,
            "openai_session_recycle_s": 0.0,
        }
        base.update(kw)
        return make_settings(**base)

    return factory


def _created_items(conn: Any) -> list[tuple[str, str]]:
    """(role, text) of every `conversation.item.create` an upstream connection received."""
    return _texts([e["item"] for e in conn.received
                   if isinstance(e, dict) and e.get("type") == "conversation.item.create"])  # fmt: skip


def _last_final_item(client: VoxgateClient) -> str | None:
    """The item id of the last final assistant transcript the client saw."""
    finals = [m for m in client.received
              if m["type"] == "transcript" and m["role"] == "assistant" and m["final"]]  # fmt: skip
    return finals[-1]["itemId"] if finals else None


def _fatal(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == "error" and m.get("fatal")]


async def _health(url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/health")
        return response.status_code, response.json()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


# --- reconnect and restore ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset", "drop", "ws-close", "blackhole"])
async def test_upstream_loss_reconnects_and_the_assistant_remembers(
    settings, gateway_factory, sim: OpenAISimulator, proxy: FaultProxy, fault: str
) -> None:
    # Missed pongs are the only way to notice a blackhole: ping often, time out fast.
    extra = {"upstream_ping_interval_s": 0.5} if fault == "blackhole" else {}
    async with gateway_factory(settings(**extra)) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True, instructions="Be brief.")
            await client.user_message("my name is Ada")
            first = await client.collect_reply(timeout=30)
            assert first.assistant_text == "You said: my name is Ada."
            assert len(proxy.connections) == 1
            upstream = proxy.connections[0]
            first_conn = sim.accepted[-1]
            mark = len(client.received)
            if fault == "blackhole":
                upstream.set_mode("blackhole")  # between turns: only the keepalive can tell
            else:
                await client.user_message(LONG)  # mid-response: audio and transcript flowing
                await client.wait_for("transcript", where=lambda m: m["role"] == "assistant",
                                      timeout=20)  # fmt: skip
                if fault == "ws-close":  # the provider ends the WebSocket properly (1011)
                    sim.inject_error("server_error", "The server had an error.", close=1011)
                else:  # the network: a TCP reset, or a FIN without any WebSocket close
                    proxy.kill(upstream, fault)  # type: ignore[arg-type]
            await client.wait_for(
                "status", where=lambda m: m["status"] == "reconnecting", timeout=20
            )
            await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=20)
            assert sim.accepted[-1] is not first_conn
            restored = sim.accepted[-1]
            # The new upstream session got the instructions and the prior turns, in order.
            assert restored.received[0]["type"] == "session.update"
            assert "Be brief." in restored.received[0]["session"]["instructions"]
            replayed = _created_items(restored)
            assert replayed[:2] == [
                ("user", "my name is Ada"),
                ("assistant", "You said: my name is Ada."),
            ]
            if fault != "blackhole":
                assert replayed[2] == ("user", LONG)  # typed before the drop: it was said
                # The response in flight was reported as failed, not left hanging.
                assert any(m["type"] == "response_done" and m["status"] == "failed"
                           for m in client.received[mark:])  # fmt: skip
            # The next turn works, and the assistant remembers what was said before the fault.
            await client.user_message("what is my name")
            third = await client.collect_reply(timeout=30)
            assert third.assistant_text == "Your name is Ada."
            assert third.audio and third.response_status == "completed"
            partial = [m["text"] for m in client.received[mark:] if m["type"] == "transcript"
                       and m["role"] == "assistant" and not m["final"]
                       and m["itemId"] != _last_final_item(client)]  # fmt: skip
            assert _fatal(client.received) == []
            errors = [m for m in client.received if m["type"] == "error"]
            assert all(m["code"] == "upstream_error" for m in errors), errors
            await client.stop()
        await _until(lambda: not gw.state.sessions)
        record = await gw.state.store.get_conversation(ready["conversationId"])
    assert record is not None
    stored = [(t.role, t.text) for t in record.turns]
    for turn in [("user", "my name is Ada"), ("assistant", "You said: my name is Ada."),
                 ("user", "what is my name"), ("assistant", "Your name is Ada.")]:  # fmt: skip
        assert turn in stored
    assert bool(partial) == (fault != "blackhole")
    if partial:
        # The answer cut off by the drop keeps the text the client saw, marked interrupted.
        cut = [t for t in record.turns if t.role == "assistant" and t.interrupted]
        assert len(cut) == 1 and cut[0].text.startswith(partial[-1])


async def test_a_slow_but_alive_upstream_is_not_taken_for_dead(
    settings, gateway_factory, sim: OpenAISimulator, proxy: FaultProxy
) -> None:
    """200 ms round trips with a 1 s keepalive: slow is not dead, so no reconnect churn."""
    async with gateway_factory(settings(upstream_ping_interval_s=1.0)) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            await client.start()
            proxy.set_mode("delay", delay_ms=100)
            for text in ("first over a slow link", "second over a slow link"):
                await client.user_message(text)
                reply = await client.collect_reply(timeout=30)
                assert reply.assistant_text == f"You said: {text}."
            await asyncio.sleep(2.5)  # a few keepalive rounds
            unexpected = [m for m in client.received if m["type"] == "error" or (
                m["type"] == "status" and m["status"] not in ("connecting", "connected"))]  # fmt: skip
            assert unexpected == []
            assert len(sim.accepted) == 1 and [c.mode for c in proxy.connections] == ["delay"]


async def test_every_reconnect_failing_ends_with_upstream_unavailable_and_keeps_turns(
    settings, gateway_factory, sim: OpenAISimulator, proxy: FaultProxy
) -> None:
    policy = {"reconnect_attempts": 4, "reconnect_base_s": 0.1, "reconnect_max_s": 0.4}
    async with gateway_factory(settings(**policy)) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start()
            await client.user_message("keep this turn")
            await client.collect_reply(timeout=30)
            dropped_at = asyncio.get_running_loop().time()
            arrivals = len(proxy.arrivals)
            proxy.set_mode("reset")  # the live upstream and every new attempt get a RST
            await client.wait_for(
                "status", where=lambda m: m["status"] == "reconnecting", timeout=20
            )
            with pytest.raises(ProtocolFailure) as info:
                await client.wait_for("never", timeout=30)
            assert info.value.error is not None
            assert info.value.error["code"] == "upstream_unavailable"
            assert "could not reconnect" in info.value.error["message"]
            with pytest.raises(ProtocolFailure):
                while True:
                    await client.recv(10)
            assert client.close_code == 4502  # not a code official SDKs auto-reconnect on
        assert proxy.turned_away == 4  # exactly the configured attempts, then it gave up
        # Exponential backoff with jitter: the waits before the attempts are drawn from
        # [d/2, d] for d = 0.1, 0.2, 0.4, 0.4 (doubling, capped). Lower bounds only: a loaded
        # machine can only make the gaps longer.
        times = [dropped_at, *proxy.arrivals[arrivals:]]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert len(gaps) == 4
        for gap, delay in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=True):
            assert gap >= delay / 2 - 0.01, gaps
        record = await gw.state.store.get_conversation(ready["conversationId"])
        assert record is not None
        assert [(t.role, t.text) for t in record.turns] == [
            ("user", "keep this turn"), ("assistant", "You said: keep this turn.")]  # fmt: skip


async def test_fatal_provider_errors_are_not_retried(
    settings, gateway_factory, sim: OpenAISimulator, proxy: FaultProxy
) -> None:
    async with gateway_factory(settings()) as gw:
        # No quota mid-conversation: fatal at once, no reconnect.
        async with VoxgateClient(gw.ws_url) as client:
            await client.start()
            dialled = len(sim.connections)
            sim.inject_error("insufficient_quota", "You exceeded your current quota.",
                             type_="insufficient_quota")  # fmt: skip
            with pytest.raises(ProtocolFailure) as info:
                await client.wait_for("never", timeout=20)
            assert (
                info.value.error is not None and info.value.error["code"] == "upstream_unavailable"
            )
            assert "quota" in info.value.error["message"]
            with pytest.raises(ProtocolFailure):
                while True:
                    await client.recv(10)
            assert client.close_code == 4502
            assert not [m for m in client.received if m.get("status") == "reconnecting"]
            await asyncio.sleep(0.5)
            assert len(sim.connections) == dialled
        # The key revoked while connected: the drop is retried, the 401 is not.
        async with VoxgateClient(gw.ws_url) as client:
            await client.start()
            dialled = len(sim.connections)
            sim.faults.invalid_key = True
            proxy.kill(proxy.connections[-1], "reset")
            with pytest.raises(ProtocolFailure) as info:
                await client.wait_for("never", timeout=20)
            assert (
                info.value.error is not None and info.value.error["code"] == "upstream_unavailable"
            )
            assert "OPENAI_API_KEY" in info.value.error["message"]
            assert len(sim.connections) == dialled + 1
            assert sim.connections[-1].rejected_status == 401


async def test_session_recycle_is_transparent_to_the_client(
    settings, gateway_factory, sim: OpenAISimulator, proxy: FaultProxy
) -> None:
    async with gateway_factory(settings(openai_session_recycle_s=1.0)) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(instructions="Be brief.")
            await client.user_message("my name is Ada")
            await client.collect_reply(timeout=30)
            await _until(lambda: len(sim.accepted) >= 2, timeout=15)
            fresh = sim.accepted[1]
            await _until(lambda: sim.accepted[0].close_code is not None, timeout=10)
            assert _created_items(fresh)[:2] == [
                ("user", "my name is Ada"), ("assistant", "You said: my name is Ada.")]  # fmt: skip
            await client.user_message("what is my name")
            reply = await client.collect_reply(timeout=30)
            assert reply.assistant_text == "Your name is Ada."
            # Nothing for the client to see: no status change, no error.
            statuses = [m["status"] for m in client.received if m["type"] == "status"]
            assert statuses == ["connecting", "connected"]
            assert not [m for m in client.received if m["type"] == "error"]


# --- circuit breaker ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["http-500", "refused"])
async def test_breaker_opens_after_three_failures_and_recovers(
    settings, gateway_factory, sim: OpenAISimulator, proxy: FaultProxy, failure: str
) -> None:
    async with gateway_factory(settings(breaker_failures=3, breaker_cooldown_s=1.5)) as gw:
        assert (await _health(gw.http_url))[1]["engines"]["openai"]["breaker"] == "closed"
        if failure == "http-500":
            sim.faults.refuse_status = 500
        else:
            proxy.set_mode("refuse")
        for _ in range(3):
            async with VoxgateClient(gw.ws_url) as client:
                await client.send({"type": "start"})
                error = await client.wait_for("error", timeout=20, fail_on_fatal=False)
                assert error["fatal"] and error["code"] == "upstream_unavailable"
        code, body = await _health(gw.http_url)
        assert code == 200 and body["status"] == "degraded"
        assert body["engines"]["openai"] == {"available": False, "breaker": "open"}
        # While open: refused at once, without dialling the provider.
        dialled, accepted = len(sim.connections), proxy.accepted
        async with VoxgateClient(gw.ws_url) as client:
            await client.send({"type": "start"})
            error = await client.wait_for("error", timeout=5, fail_on_fatal=False)
            assert error["code"] == "engine_unavailable" and error["fatal"] is True
            assert "circuit breaker" in error["message"]
            with pytest.raises(ProtocolFailure):
                while True:
                    await client.recv(5)
            assert client.close_code == 4503
        assert (len(sim.connections), proxy.accepted) == (dialled, accepted)
        # The provider comes back; after the cooldown one trial goes through and closes it.
        sim.faults.refuse_status = None
        proxy.set_mode("pass")
        await proxy.wait_listening()
        await asyncio.sleep(1.6)
        assert (await _health(gw.http_url))[1]["engines"]["openai"]["breaker"] == "half_open"
        async with VoxgateClient(gw.ws_url) as client:
            await client.start()
            await client.user_message("back again")
            assert (await client.collect_reply(timeout=30)).response_status == "completed"
        code, body = await _health(gw.http_url)
        assert body["engines"]["openai"] == {"available": True, "breaker": "closed"}
        assert body["status"] == "ok"


async def test_a_message_swallowed_by_a_dying_upstream_still_gets_its_answer(
    settings, gateway_factory, sim: OpenAISimulator, proxy: FaultProxy
) -> None:
    """The user's message and `response.create` leave the gateway into a connection that is
    already dead (the bytes vanish); after the reconnect the message is replayed and the reply
    requested again, so the user is never left waiting forever."""
    async with gateway_factory(settings()) as gw, VoxgateClient(gw.ws_url) as client:
        await client.start()
        upstream = proxy.connections[-1]
        upstream.set_mode("blackhole")
        await client.user_message("are you still there")
        # Both events (the message and `response.create`) went into the void.
        await _until(lambda: upstream.blackholed_up > 2 * len('{"type":"response.create"}'))
        await asyncio.sleep(0.2)
        assert sim.accepted[-1].received_types() == ["session.update"]
        proxy.kill(upstream, "reset")
        await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=20)
        reply = await client.collect_reply(timeout=20)
        assert reply.assistant_text == "You said: are you still there."
        assert _fatal(client.received) == []
        restored = sim.accepted[-1]
        assert _created_items(restored) == [("user", "are you still there")]
        assert restored.received_types().count("response.create") == 1


# --- graceful shutdown -------------------------------------------------------------------------


async def test_shutdown_mid_answer_and_mid_reconnect_tells_everyone_and_keeps_turns(
    settings, gateway_factory, sim: OpenAISimulator, proxy: FaultProxy
) -> None:
    """The subprocess SIGTERM test (test_observability) covers an idle cascade session; this one
    shuts down while one answer is streaming and another session waits out a reconnect backoff."""
    gw_cm = gateway_factory(settings(reconnect_base_s=3.0, reconnect_max_s=10.0,
                                     shutdown_deadline_s=5.0))  # fmt: skip
    gw = await gw_cm.__aenter__()
    clients = [await VoxgateClient(gw.ws_url).connect() for _ in range(3)]
    try:
        ready = [await c.start() for c in clients]
        assert len(proxy.connections) == 3  # one upstream per session, in start order
        for i, client in enumerate(clients):
            await client.user_message(f"finished turn {i}")
            await client.collect_reply(timeout=30)
        streaming, reconnecting, idle = clients
        # One session loses its upstream, and the provider turns reconnects away for now: it
        # sits in a multi-second backoff.
        proxy.set_mode("reset", live=False)
        proxy.kill(proxy.connections[1], "reset")
        await reconnecting.wait_for("status", where=lambda m: m["status"] == "reconnecting",
                                    timeout=20)  # fmt: skip
        # Another is mid-answer (real-time pace: the long answer takes seconds).
        sim.pace = 1.0
        await streaming.user_message(LONG)
        await streaming.wait_for("transcript", where=lambda m: m["role"] == "assistant", timeout=20)
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        gw.server.should_exit = True  # what SIGTERM/SIGINT do under uvicorn
        for client in clients:
            status = await client.wait_for("status", where=lambda m: m["status"] == "disconnected",
                                           timeout=15)  # fmt: skip
            assert status["reason"] == "server_shutdown"
            with pytest.raises(ProtocolFailure):
                while True:
                    await client.recv(10)
            assert client.close_code == 1001
            assert _fatal(client.received) == []
        seen = [m["text"] for m in streaming.received
                if m["type"] == "transcript" and m["role"] == "assistant" and not m["final"]]  # fmt: skip
    finally:
        for client in clients:
            await client.close()
        await gw_cm.__aexit__(None, None, None)
    # Exits within its deadline (5 s), with margin for a loaded machine.
    assert loop.time() - stopped_at < 5.0 + 5.0
    # Every finished turn is stored, the typed message in flight too, and the answer that was
    # cut off keeps the text the client saw (marked interrupted); every conversation is ended.
    async with gateway_factory(settings()) as again:
        for i, r in enumerate(ready):
            record = await again.state.store.get_conversation(r["conversationId"])
            assert record is not None and record.ended_at is not None
            texts = [(t.role, t.text) for t in record.turns]
            assert texts[:2] == [("user", f"finished turn {i}"),
                                 ("assistant", f"You said: finished turn {i}.")]  # fmt: skip
        record = await again.state.store.get_conversation(ready[0]["conversationId"])
        assert record is not None
        assert ("user", LONG) in [(t.role, t.text) for t in record.turns]
        cut = [t for t in record.turns if t.role == "assistant" and t.interrupted]
        assert len(cut) == 1 and seen and cut[0].text.startswith(seen[-1])


async def test_a_half_open_trial_that_never_dials_does_not_wedge_the_breaker(
    settings, gateway_factory, sim: OpenAISimulator, proxy: FaultProxy
) -> None:
    """The one trial a half-open breaker lets through may never reach the provider (a bad
    `conversationId`, a client that hangs up while connecting). Nobody reports its outcome then,
    and the breaker must not refuse every session from that moment on."""
    async with gateway_factory(settings(breaker_failures=3, breaker_cooldown_s=1.0)) as gw:
        sim.faults.refuse_status = 500
        for _ in range(3):
            async with VoxgateClient(gw.ws_url) as client:
                await client.send({"type": "start"})
                await client.wait_for("error", timeout=20, fail_on_fatal=False)
        sim.faults.refuse_status = None
        await asyncio.sleep(1.1)
        assert (await _health(gw.http_url))[1]["engines"]["openai"]["breaker"] == "half_open"
        # The trial asks to resume a conversation that does not exist: refused before dialling.
        async with VoxgateClient(gw.ws_url) as client:
            await client.send({"type": "start", "conversationId": "no-such-conversation"})
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "bad_request"
        # The next session is the real trial: it goes through and closes the breaker.
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(timeout=10)
        assert (await _health(gw.http_url))[1]["engines"]["openai"]["breaker"] == "closed"


def test_a_lost_half_open_trial_holds_the_breaker_for_one_cooldown_at_most() -> None:
    """A trial whose session is cancelled before the engine dials (shutdown, idle timeout while
    starting) never records an outcome."""
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown_s=10.0, clock=lambda: now[0])
    for _ in range(3):
        breaker.record(False)
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half_open"
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # one at a time
    now[0] = 19.9
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()  # the lost trial's lease ran out: another may try
    breaker.record(True)
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()
    # A failed trial re-opens the breaker at once, for a fresh cooldown.
    for _ in range(3):
        breaker.record(False)
    now[0] = 30.0
    assert breaker.allow()
    breaker.record(False)
    assert breaker.state == "open" and breaker.retry_after_s() == 10.0


def test_default_reconnect_policy_is_one_two_four_capped_at_thirty_five_attempts() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.reconnect_attempts, settings.reconnect_base_s, settings.reconnect_max_s) == (
        5, 1.0, 30.0)  # fmt: skip
    assert (settings.breaker_failures, settings.breaker_cooldown_s) == (3, 30.0)
    policy = ReconnectPolicy(settings.reconnect_attempts, settings.reconnect_base_s,
                             settings.reconnect_max_s)  # fmt: skip
    assert policy.delays() == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert ReconnectPolicy(7, 1.0, 30.0).delays()[-2:] == [30.0, 30.0]
    draws = [policy.jittered(8.0) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in draws) and len(set(draws)) > 100  # jitter, not fixed
