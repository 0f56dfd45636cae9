"""Nothing said is lost to a reconnect: speech sent while the upstream reconnects is kept and
answered afterwards, for every engine that reconnects.

Topology: client -> gateway (in this loop) -> `FaultProxy` -> provider simulator. The proxy
resets the live upstream and turns reconnects away for as long as a test needs (an outage),
then lets them through. The client sends real espeak-ng speech at the engine's native rate, so
the bytes reach the provider unchanged and a test can check that the whole utterance arrived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from voxgate.audio import bytes_for_ms, rms_dbfs
from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.config import Settings
from voxgate.testing.elevenlabs_sim import ElevenLabsSim, SimAgent
from voxgate.testing.faultproxy import FaultProxy
from voxgate.testing.openai_sim import OpenAISimulator
from voxgate.testing.speech import silence, synthesize

KEY = "sk-test-held-audio"
HEARD = "what time is it"
ANSWER = f"You said: {HEARD}."
FRAME_MS = 20


def speech(rate: int) -> bytes:
    """The phrase as PCM16 at `rate`, from its first loud frame: 'speech starts' is exact."""
    pcm = synthesize(HEARD, rate)
    step = bytes_for_ms(FRAME_MS, rate)
    for i in range(0, len(pcm), step):
        if rms_dbfs(pcm[i : i + step]) > -35.0:
            return pcm[i:]
    raise AssertionError("espeak-ng produced no audible speech")


@dataclass
class Provider:
    """One reconnecting engine behind the fault proxy, and how to read what its simulator heard."""

    engine: str
    rate: int
    sim: Any
    proxy: FaultProxy
    settings: dict[str, Any]

    def heard_audio(self, index: int = -1) -> bytes:
        """All user audio the `index`-th upstream connection received, in order."""
        if self.engine == "elevenlabs":
            return bytes(self.sim.conversations[index].audio_in)
        conn = self.sim.accepted[index]
        return b"".join(
            base64.b64decode(e["audio"]) for e in conn.received
            if isinstance(e, dict) and e.get("type") == "input_audio_buffer.append"
        )  # fmt: skip

    def upstreams(self) -> int:
        if self.engine == "elevenlabs":
            return len(self.sim.conversations)
        return len(self.sim.accepted)

    def user_turns(self, index: int = -1) -> int:
        """How many user utterances the `index`-th upstream committed into a turn."""
        if self.engine == "elevenlabs":
            return len(self.sim.conversations[index].user_transcripts)
        sent = self.sim.accepted[index].sent
        return sum(1 for e in sent if e.get("type") == "input_audio_buffer.committed")


@pytest.fixture(params=["openai", "elevenlabs"])
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[Provider]:
    common = {"start_timeout_s": 5.0, "reconnect_attempts": 60, "reconnect_base_s": 0.05,
              "reconnect_max_s": 0.2, "breaker_failures": 1000}  # fmt: skip
    if request.param == "openai":
        async with (
            OpenAISimulator(keys=[KEY], pace=6.0, transcript=HEARD) as sim,
            FaultProxy("127.0.0.1", sim.port) as proxy,
        ):
            settings = {"engine": "openai", "openai_api_key": KEY,
                        "openai_url": proxy.ws_url("/v1/realtime"),
                        "openai_session_recycle_s": 0.0, **common}  # fmt: skip
            yield Provider("openai", 24000, sim, proxy, settings)
    else:
        agent = SimAgent(agent_id="agent_public", requires_auth=False)
        async with ElevenLabsSim(agents=[agent], pace=6.0, transcript=HEARD) as el:
            async with FaultProxy("127.0.0.1", el.port) as proxy:
                settings = {"engine": "elevenlabs", "elevenlabs_agent_id": "agent_public",
                            "elevenlabs_url": proxy.ws_url("/v1/convai/conversation"),
                            **common}  # fmt: skip
                yield Provider("elevenlabs", 16000, el, proxy, settings)


def _metric(gw: Any, name: str, **labels: str) -> float:
    key = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return float(gw.state.metrics.summary().get(name, {}).get(key, 0.0))


async def _outage(provider: Provider) -> None:
    """The live upstream dies with a TCP reset, and every reconnect is turned away until
    `_recovery`."""
    proxy = provider.proxy
    upstream = proxy.connections[-1]
    proxy.set_mode("reset", live=False)
    proxy.kill(upstream, "reset")


async def _recovery(provider: Provider) -> None:
    provider.proxy.set_mode("pass")
    await provider.proxy.wait_listening()


async def _user_finals(client: VoxgateClient, settle_s: float = 0.5) -> list[str]:
    """Every final user transcript, after reading whatever arrives within `settle_s`."""
    with contextlib.suppress(TimeoutError):
        while True:
            await client.recv(settle_s)
    return [m["text"] for m in client.received
            if m["type"] == "transcript" and m["role"] == "user" and m["final"]]  # fmt: skip


def _errors(client: VoxgateClient) -> list[dict[str, Any]]:
    return [m for m in client.received if m["type"] == "error"]


async def test_speech_that_straddles_an_upstream_reset_is_heard_whole_and_answered(
    make_settings: Callable[..., Settings], gateway_factory: Callable[..., Any], provider: Provider
) -> None:
    rate = provider.rate
    said = speech(rate)
    head = bytes_for_ms(200, rate)  # speech sent before the reset
    async with gateway_factory(make_settings(**provider.settings)) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True, inputRate=rate, outputRate=rate)
            await client.stream_audio(silence(500, rate))
            await client.stream_audio(said[:head])
            await _outage(provider)
            # The rest of the utterance and the silence that ends it, all while reconnecting.
            await client.stream_audio(said[head:] + silence(1000, rate))
            assert provider.upstreams() == 1  # nothing got through during the outage
            await _recovery(provider)
            await client.wait_for("status", where=lambda m: m["status"] == "reconnecting")
            await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=20)
            reply = await client.collect_reply(timeout=30)
            assert reply.response_status == "completed"
            assert reply.assistant_text == ANSWER and reply.audio
            await client.stream_audio(silence(300, rate))
            users = await _user_finals(client)
            assert users == [HEARD]  # one utterance, one turn: not split, not committed twice
            assert _errors(client) == []
            await client.stop()
        # The new upstream heard the utterance whole, its first 200 ms (sent to the upstream
        # that died) included, byte for byte and in order; and committed it exactly once.
        assert provider.upstreams() == 2
        assert said in provider.heard_audio(-1)
        assert provider.user_turns(-1) == 1 and provider.user_turns(0) == 0
        engine = provider.engine
        replayed = _metric(gw, "voxgate_reconnect_audio_replayed_seconds", engine=engine)
        assert replayed >= (len(said) - head) / (2 * rate)
        assert _metric(gw, "voxgate_reconnect_audio_buffered_seconds", engine=engine) >= replayed
        assert _metric(gw, "voxgate_reconnect_audio_dropped_seconds", engine=engine,
                       reason="overflow") == 0  # fmt: skip
        record = await gw.state.store.get_conversation(ready["conversationId"])
    assert record is not None
    assert [(t.role, t.text) for t in record.turns] == [("user", HEARD), ("assistant", ANSWER)]


@pytest.fixture
async def openai() -> AsyncIterator[Provider]:
    """The OpenAI engine alone: what is shared by every engine is tested once, on it."""
    async with (
        OpenAISimulator(keys=[KEY], pace=6.0, transcript=HEARD) as sim,
        FaultProxy("127.0.0.1", sim.port) as proxy,
    ):
        settings = {"engine": "openai", "openai_api_key": KEY,
                    "openai_url": proxy.ws_url("/v1/realtime"), "openai_session_recycle_s": 0.0,
                    "start_timeout_s": 5.0, "reconnect_attempts": 60, "reconnect_base_s": 0.05,
                    "reconnect_max_s": 0.2, "breaker_failures": 1000}  # fmt: skip
        yield Provider("openai", 24000, sim, proxy, settings)


async def test_a_long_outage_keeps_the_newest_audio_tells_the_client_once_and_goes_on(
    make_settings: Callable[..., Settings], gateway_factory: Callable[..., Any], openai: Provider
) -> None:
    rate = openai.rate
    said = speech(rate)
    # Room for the utterance and the silence that ends it; not for the 3 s before it.
    kept_s = round(len(said) / (2 * rate) + 1.2, 1)
    limit = bytes_for_ms(kept_s * 1000, rate)
    settings = make_settings(**openai.settings, reconnect_audio_buffer_s=kept_s)
    async with gateway_factory(settings) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(binary=True, inputRate=rate, outputRate=rate)
            before = silence(400, rate)
            await client.stream_audio(before)
            await _outage(openai)
            during = silence(3000, rate) + said + silence(800, rate)
            # Whole frames only: the session holds a trailing piece shorter than one frame until
            # more audio (or a commit) joins it, and this test is about what the buffer keeps.
            during += bytes(-len(during) % bytes_for_ms(FRAME_MS, rate))
            await client.stream_audio(during)
            await _recovery(openai)
            await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=20)
            reply = await client.collect_reply(timeout=30)
            assert reply.assistant_text == ANSWER  # the newest audio held the whole utterance
            errors = _errors(client)
            assert len(errors) == 1, errors  # told once, although many frames were dropped
            assert errors[0]["code"] == "upstream_unavailable" and errors[0]["fatal"] is False
            assert f"last {kept_s:g} s" in errors[0]["message"]
            assert "dropped" in errors[0]["message"]
            # The session goes on: the next turn works as usual.
            await client.user_message("and now")
            again = await client.collect_reply(timeout=30)
            assert again.response_status == "completed"
            assert await _user_finals(client) == [HEARD]
            await client.stop()
        # What reached the new upstream is the newest audio, in order: a suffix of everything
        # sent, no longer than the limit and shorter than it by less than one frame.
        heard = openai.heard_audio(-1)
        assert (before + during).endswith(heard)
        assert limit - bytes_for_ms(FRAME_MS, rate) < len(heard) <= limit
        dropped = _metric(gw, "voxgate_reconnect_audio_dropped_seconds", engine="openai",
                          reason="overflow")  # fmt: skip
        sent_s = (len(during) + bytes_for_ms(400, rate)) / (2 * rate)
        assert dropped == pytest.approx(sent_s - len(heard) / (2 * rate), abs=0.05)


async def test_a_commit_during_the_reconnect_gets_exactly_one_answer_after_restore(
    make_settings: Callable[..., Settings], gateway_factory: Callable[..., Any], provider: Provider
) -> None:
    rate = provider.rate
    said = speech(rate)
    async with gateway_factory(make_settings(**provider.settings)) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True, inputRate=rate, outputRate=rate,
                                       turnDetection={"mode": "manual"})  # fmt: skip
            await _outage(provider)
            await client.stream_audio(said)  # push-to-talk held during the outage ...
            await client.commit()  # ... and released: the turn ends while still reconnecting
            await client.ping("after-commit")  # the commit did not stall the session
            await client.wait_for("pong", timeout=5)
            await asyncio.sleep(0.3)
            await _recovery(provider)
            await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=20)
            reply = await client.collect_reply(timeout=30)
            assert reply.response_status == "completed" and reply.assistant_text == ANSWER
            assert await _user_finals(client, settle_s=1.0) == [HEARD]
            done = [m for m in client.received if m["type"] == "response_done"]
            assert len(done) == 1
            assert _errors(client) == []
            await client.stop()
        heard = provider.heard_audio(-1)
        assert heard.startswith(said)
        assert provider.user_turns(-1) == 1
        if provider.engine == "openai":
            # The whole utterance appended, then one commit, then one request for the answer.
            restored = provider.sim.accepted[-1]
            types = [t for t in restored.received_types() if t != "conversation.item.create"]
            appends = types.count("input_audio_buffer.append")
            assert types == ["session.update", *["input_audio_buffer.append"] * appends,
                             "input_audio_buffer.commit", "response.create"]  # fmt: skip
            assert heard == said
        else:
            # ElevenLabs has no commit message: the engine's trailing silence ends the turn,
            # held in its place after the utterance.
            assert set(heard[len(said):]) == {0}
        record = await gw.state.store.get_conversation(ready["conversationId"])
    assert record is not None
    assert [(t.role, t.text) for t in record.turns] == [("user", HEARD), ("assistant", ANSWER)]


async def test_a_reconnect_that_fails_discards_the_held_audio_with_the_usual_fatal_error(
    make_settings: Callable[..., Settings], gateway_factory: Callable[..., Any], openai: Provider
) -> None:
    rate = openai.rate
    # At least 1.5 s of attempts (jitter keeps at least half of each 0.3 s backoff): longer
    # than the speech, which is all held when the gateway gives up.
    policy = {"reconnect_attempts": 10, "reconnect_base_s": 0.3, "reconnect_max_s": 0.3}
    settings = make_settings(**{**openai.settings, **policy})
    async with gateway_factory(settings) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(binary=True, inputRate=rate, outputRate=rate)
            openai.proxy.set_mode("reset")  # the live upstream and every attempt: reset
            await client.stream_audio(speech(rate))
            with pytest.raises(ProtocolFailure) as info:
                await client.wait_for("never", timeout=20)
            assert info.value.error is not None
            assert info.value.error["code"] == "upstream_unavailable"
            assert "could not reconnect" in info.value.error["message"]
            assert _errors(client)[:-1] == []  # nothing else went wrong before it
            with pytest.raises(ProtocolFailure):
                while True:
                    await client.recv(10)
            assert client.close_code == 4502
        assert openai.upstreams() == 1  # nothing was ever replayed anywhere
        discarded = _metric(gw, "voxgate_reconnect_audio_dropped_seconds", engine="openai",
                            reason="reconnect_failed")  # fmt: skip
        assert discarded > 0.2
        assert _metric(gw, "voxgate_reconnect_audio_replayed_seconds", engine="openai") == 0
