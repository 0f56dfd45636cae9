"""Turn-taking the app can steer, through a real gateway, for every engine its capabilities allow.

What a user of `/ws` relies on: `hold` keeps the assistant quiet across utterances and
`allow_next` answers them in one reply; a cough, noise or an "mm-hmm" over the assistant does
not stop it (it may pause and resume), a real sentence does; an endless monologue is ended at
`maxUtteranceMs`; `barge_in` stops the audio and truncates the turn where the listener was;
out-of-turn requests get clear non-fatal errors. OpenAI and the cascade steer turns
(`turnControl`); ElevenLabs decides on its side, which the gateway says rather than pretends.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.turns import (
    BACKCHANNEL,
    LONG,
    SENTENCE,
    drain,
    gateway_with,
    messages,
    monologue,
    noise,
    of_type,
    speech,
    turn,
    turns_seen,
    until,
    wait_message,
)
from voxgate.client import VoxgateClient
from voxgate.testing.speech import silence

STEERED = ["openai", "cascade"]
ALL = ["openai", "cascade", "elevenlabs", "openai-live"]
#: The interruption policy the cough / backchannel / sentence tests run with.
POLICY = {"interruptMinMs": 250, "interruptMinWords": 1}


async def _long_reply_playing(client: VoxgateClient) -> dict:
    """Ask for a long reply and wait until its audio is on its way to the client."""
    await client.user_message(LONG)
    return await wait_message(client, turn("assistant_turn_started"), timeout=30)


# --- hold / allow_next ----------------------------------------------------------------------


@pytest.mark.parametrize("engine", STEERED)
async def test_hold_across_two_utterances_then_one_reply_covers_both(
    engine, make_settings, gateway_factory, tmp_path
) -> None:
    async with gateway_with(engine, make_settings, gateway_factory, tmp_path,
                            transcripts=["what time is it", SENTENCE]) as (gw, sim):  # fmt: skip
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True)
            assert ready["capabilities"]["turnControl"] is True
            assert ready["turnTaking"]["hold"] is True
            await client.hold()
            await wait_message(client, turn("held"))
            rate = client.input_rate
            for phrase in ("what time is it", SENTENCE):
                await client.stream_audio(speech(phrase, rate), speed=2.0)
                await wait_message(
                    client,
                    lambda m, p=phrase: m.get("type") == "transcript" and m["role"] == "user"
                    and m["final"] and m["text"].strip(" .").lower() == p,
                )  # fmt: skip
            await drain(client, "held")
            assert messages(client, "response_done") == []
            assert not [m for m in messages(client, "transcript") if m["role"] == "assistant"]
            await client.allow_next(respond=True)
            await wait_message(client, turn("released", reason="respond"))
            done = await wait_message(client, of_type("response_done"), timeout=30)
            assert done["status"] == "completed"
            replies = [m for m in messages(client, "transcript") if m["role"] == "assistant" and m["final"]]
            assert len(replies) == 1
            said = replies[0]["text"].lower()
            assert "what time is it" in said and SENTENCE in said, said
            await drain(client, "after")
            assert len(messages(client, "response_done")) == 1
        if sim is not None:
            creates = [e for e in sim.accepted[-1].received if e.get("type") == "response.create"]
            assert len(creates) == 1


@pytest.mark.parametrize("engine", STEERED)
async def test_min_silence_joins_utterances_within_the_pause_into_one_reply(
    engine, make_settings, gateway_factory, tmp_path
) -> None:
    async with gateway_with(engine, make_settings, gateway_factory, tmp_path,
                            transcripts=["what time is it", SENTENCE]) as (gw, _):  # fmt: skip
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True, turnDetection={"minSilenceMs": 2000})
            assert ready["turnTaking"]["minSilenceMs"] == 2000
            rate = client.input_rate
            # A pause long enough for the engine's VAD to end the first utterance (its own
            # silence is 400-500 ms), far shorter than the 2 s the app asked for.
            pcm = speech("what time is it", rate, after_ms=700) + speech(SENTENCE, rate, before_ms=0)
            await client.stream_audio(pcm, speed=2.0)
            done = await wait_message(client, of_type("response_done"), timeout=30)
            assert done["status"] == "completed"
            assert turns_seen(client).count("user_turn_ended") == 2
            replies = [m for m in messages(client, "transcript") if m["role"] == "assistant" and m["final"]]
            assert len(replies) == 1
            assert "what time is it" in replies[0]["text"].lower() and SENTENCE in replies[0]["text"].lower()
            await drain(client, "joined")
            assert len(messages(client, "response_done")) == 1


async def test_by_default_turns_go_as_before_and_are_reported(
    make_settings, gateway_factory, tmp_path
) -> None:
    """Without turn settings the engine decides as it always did (OpenAI's server VAD creates
    and cancels responses itself); the client now also reads the floor from `turn` events."""
    async with gateway_with("openai", make_settings, gateway_factory, tmp_path,
                            transcripts=["what time is it"]) as (gw, sim):  # fmt: skip
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True)
            assert ready["turnTaking"]["interruption"] == "engine"
            assert ready["turnTaking"]["minSilenceMs"] == 0 and ready["turnTaking"]["maxUtteranceMs"] == 0
            await client.stream_audio(speech("what time is it", client.input_rate), speed=2.0)
            await wait_message(client, turn("assistant_turn_ended"), timeout=30)
            assert turns_seen(client) == [
                "user_turn_started", "user_turn_ended", "assistant_turn_started", "assistant_turn_ended"
            ]  # fmt: skip
            reasons = [m.get("reason") for m in messages(client, "turn")]
            assert reasons == [None, "silence", None, "completed"]
        vad = sim.accepted[-1].session["audio"]["input"]["turn_detection"]
        assert vad["create_response"] is True and vad["interrupt_response"] is True
        sent = sim.accepted[-1].received_types()
        assert "response.create" not in sent  # the server VAD answered by itself


# --- a barge-in, or a cough? ----------------------------------------------------------------


async def _over_the_reply(client: VoxgateClient, sound: bytes) -> dict:
    """Play `sound` (then silence, so a VAD ends it) while a long reply is playing."""
    started = await _long_reply_playing(client)
    rate = client.input_rate
    await client.stream_audio(silence(100, rate) + sound + silence(1000, rate), speed=2.0)
    return started


async def _reply_completes_uncut(client: VoxgateClient, item_id: str) -> None:
    done = await wait_message(client, of_type("response_done"), timeout=30)
    assert done["status"] == "completed"
    await wait_message(client, turn("assistant_turn_ended", itemId=item_id, reason="completed"))
    assert [m for m in messages(client, "interrupted") if m["itemId"] == item_id] == []


async def _conversation_goes_on(client: VoxgateClient) -> None:
    """No stuck state: a typed question still gets its own reply."""
    before = len(messages(client, "response_done"))
    await client.user_message("are you still there")
    await wait_message(client, lambda m: m.get("type") == "response_done"
                       and len(messages(client, "response_done")) > before, timeout=30)  # fmt: skip
    replies = [m for m in messages(client, "transcript") if m["role"] == "assistant" and m["final"]]
    assert "still there" in replies[-1]["text"].lower()


@pytest.mark.parametrize("engine", STEERED)
async def test_a_cough_over_the_reply_does_not_stop_it(
    engine, make_settings, gateway_factory, tmp_path
) -> None:
    async with gateway_with(engine, make_settings, gateway_factory, tmp_path,
                            transcripts=[""]) as (gw, _):  # fmt: skip
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True, turnDetection=POLICY)
            assert ready["turnTaking"]["interruption"] == "gateway"
            started = await _over_the_reply(client, noise(150, client.input_rate))
            # The engine heard it (it is loud), and the gateway let it pass.
            await wait_message(client, turn("user_turn_ended"))
            await _reply_completes_uncut(client, started["itemId"])
            assert "assistant_paused" not in turns_seen(client)
            await _conversation_goes_on(client)
            assert len(messages(client, "response_done")) == 2  # no reply to the cough


@pytest.mark.parametrize("engine", STEERED)
async def test_mm_hmm_over_the_reply_does_not_stop_it(
    engine, make_settings, gateway_factory, tmp_path
) -> None:
    async with gateway_with(engine, make_settings, gateway_factory, tmp_path,
                            transcripts=["Mm-hmm."]) as (gw, _):  # fmt: skip
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(binary=True, turnDetection=POLICY)
            started = await _over_the_reply(client, speech(BACKCHANNEL, client.input_rate, after_ms=0))
            item = started["itemId"]
            # Long enough to pause for; its words are only a backchannel: the reply resumes.
            await wait_message(client, turn("assistant_paused", itemId=item))
            resumed = await wait_message(client, turn("assistant_resumed", itemId=item))
            assert resumed["reason"] == "backchannel"
            await _reply_completes_uncut(client, item)
            await _conversation_goes_on(client)
            assert len(messages(client, "response_done")) == 2


@pytest.mark.parametrize("engine", STEERED)
async def test_a_real_sentence_over_the_reply_stops_it_and_is_answered(
    engine, make_settings, gateway_factory, tmp_path
) -> None:
    async with gateway_with(engine, make_settings, gateway_factory, tmp_path,
                            transcripts=[SENTENCE]) as (gw, sim):  # fmt: skip
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(binary=True, turnDetection=POLICY)
            started = await _over_the_reply(client, speech(SENTENCE, client.input_rate, after_ms=0))
            item = started["itemId"]
            cut = await wait_message(client, of_type("interrupted", itemId=item), timeout=30)
            ended = await wait_message(client, turn("assistant_turn_ended", itemId=item))
            assert ended["reason"] == "interrupted"
            # Nothing of the cut item after `interrupted`.
            at = client.received.index(cut)
            await drain(client, "cut")
            late = [m for m in client.received[at + 1 :] if m["type"] == "audio" and m.get("itemId") == item]
            assert late == []
            # The sentence is answered.
            await wait_message(client, lambda m: m.get("type") == "transcript" and m["role"] == "assistant"
                               and m["final"] and SENTENCE in m["text"].lower(), timeout=30)  # fmt: skip
        if sim is not None:
            truncates = [e for e in sim.accepted[-1].received if e.get("type") == "conversation.item.truncate"]
            assert truncates and truncates[-1]["item_id"] == item
            assert truncates[-1]["audio_end_ms"] == cut["playedMs"]


@pytest.mark.parametrize("engine", STEERED)
async def test_a_false_interruption_resumes_the_reply_and_leaves_nothing_stuck(
    engine, make_settings, gateway_factory, tmp_path
) -> None:
    async with gateway_with(engine, make_settings, gateway_factory, tmp_path,
                            transcripts=[""]) as (gw, _):  # fmt: skip
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(binary=True, turnDetection=POLICY)
            # Loud enough and long enough to pause for, but no words ever come.
            started = await _over_the_reply(client, noise(700, client.input_rate))
            item = started["itemId"]
            await wait_message(client, turn("assistant_paused", itemId=item))
            resumed = await wait_message(client, turn("assistant_resumed", itemId=item))
            # (The cascade's grammar-bound recogniser forces noise into "mm": a backchannel.)
            assert resumed["reason"] in ("no_words", "backchannel")
            if engine == "openai":
                assert resumed["reason"] == "no_words"
            await _reply_completes_uncut(client, item)
            await _conversation_goes_on(client)
            assert len(messages(client, "response_done")) == 2


# --- utterance limits -----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ALL)
async def test_max_utterance_ends_a_40_second_monologue(
    engine, make_settings, gateway_factory, tmp_path
) -> None:
    async with gateway_with(engine, make_settings, gateway_factory, tmp_path,
                            transcripts=["what time is it " * 4]) as (gw, _):  # fmt: skip
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True, turnDetection={"maxUtteranceMs": 6000})
            assert ready["turnTaking"]["maxUtteranceMs"] == 6000
            rate = client.input_rate
            # 40 s of talk without a pause, streamed at three times real time.
            await client.stream_audio(silence(200, rate) + monologue(40, rate), speed=3.0)
            ended = await wait_message(client, turn("user_turn_ended", reason="max_utterance"))
            # The turn was ended for the user, and answered; the rest of the monologue was not
            # heard as a new turn that would cut the answer off.
            await wait_message(client, of_type("response_done"), timeout=60)
            await client.stream_audio(silence(1500, rate), speed=3.0)
            await drain(client, "monologue")
            # One user turn, ended by the limit (ElevenLabs reports speech only with its words,
            # so there the gateway's end is all the client hears of it).
            assert turns_seen(client).count("user_turn_ended") == 1
            assert turns_seen(client).count("user_turn_started") <= 1
            assert messages(client, "interrupted") == []
            assert messages(client, "error") == []  # (GPT-Live refuses a commit: none was sent)
            assert client.received.index(ended) < client.received.index(messages(client, "response_done")[0])
            assert [m["status"] for m in messages(client, "response_done")] == ["completed"]
            # After a pause the microphone is heard again: the next turn works as usual.
            await client.stream_audio(speech("what time is it", rate), speed=2.0)
            await wait_message(client, lambda m: m.get("type") == "turn" and m["event"] == "user_turn_ended"
                               and turns_seen(client).count("user_turn_ended") == 2, timeout=30)  # fmt: skip
            await wait_message(client, lambda m: m.get("type") == "response_done"
                               and len(messages(client, "response_done")) == 2, timeout=60)  # fmt: skip


# --- barge_in -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ALL)
async def test_barge_in_stops_the_audio_and_truncates_at_the_played_position(
    engine, make_settings, gateway_factory, tmp_path
) -> None:
    async with gateway_with(engine, make_settings, gateway_factory, tmp_path) as (gw, sim):
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True)
            started = await _long_reply_playing(client)
            item = started["itemId"]
            # More than the 400 ms the listener will have heard has reached the client.
            rate_ms = client.output_rate * 2 / 1000
            await wait_message(client, lambda m: sum(
                len(a["pcm16"]) for a in messages(client, "audio") if a["itemId"] == item
            ) > 600 * rate_ms)  # fmt: skip
            await client.barge_in(400)
            cut = await wait_message(client, of_type("interrupted", itemId=item), timeout=15)
            assert cut["playedMs"] == 400
            ended = await wait_message(client, turn("assistant_turn_ended", itemId=item))
            assert ended["reason"] == "barge_in"
            at = client.received.index(cut)
            await drain(client, "barged")
            late = [m for m in client.received[at + 1 :] if m["type"] == "audio" and m.get("itemId") == item]
            assert late == []
            if engine == "openai":
                truncated = await until(lambda: [
                    (e["item_id"], e["audio_end_ms"]) for e in sim.accepted[-1].received
                    if e.get("type") == "conversation.item.truncate"
                ], what="the simulator got the truncate")  # fmt: skip
                assert truncated == [(item, 400)]
            elif engine == "elevenlabs":
                conversation = await sim.wait_for_conversation()
                # All ElevenLabs offers to stop its agent.
                await until(lambda: conversation.user_activity, what="user_activity")
            await client.stop()
        await gw.wait_idle()
        # The stored turn holds what the listener heard up to 400 ms, marked interrupted.
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            stored = (await http.get(f"/api/conversations/{ready['conversationId']}")).json()
        (turn_,) = [t for t in stored["turns"] if t["itemId"] == item]
        assert turn_["interrupted"] is True
        assert len(turn_["heardText"] or "") < len(turn_["text"]) or not turn_["text"]


# --- bad input ------------------------------------------------------------------------------


async def _error_then_alive(client: VoxgateClient, message: dict, code: str, words: str) -> None:
    before = len(messages(client, "error"))
    await client.send(message)
    error = await wait_message(client, lambda m: m.get("type") == "error"
                               and len(messages(client, "error")) > before)  # fmt: skip
    assert error["code"] == code and error["fatal"] is False, error
    assert words in error["message"], error["message"]
    await drain(client, f"alive-{message['type']}-{before}")


@pytest.mark.parametrize("engine", STEERED)
async def test_turn_requests_out_of_turn_get_clear_errors_and_the_session_goes_on(
    engine, make_settings, gateway_factory, tmp_path
) -> None:
    async with gateway_with(engine, make_settings, gateway_factory, tmp_path) as (gw, _):
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(binary=True, turnDetection={"interruptMinMs": 200, "maxUtterancesMs": 5})
            # A misspelt field is named, not silently dropped; the session started anyway.
            typo = await wait_message(client, of_type("error", code="bad_request"))
            assert "maxUtterancesMs" in typo["message"] and typo["fatal"] is False
            await _error_then_alive(client, {"type": "allow_next"}, "bad_request", "not held")
            await _error_then_alive(client, {"type": "barge_in", "playedMs": 10}, "bad_request",
                                    "nothing to stop")  # fmt: skip
            await _error_then_alive(client, {"type": "hold", "please": True}, "bad_request",
                                    "unknown field 'please'")  # fmt: skip
            await _error_then_alive(client, {"type": "allow_next", "respnd": True}, "bad_request",
                                    "unknown field 'respnd'")  # fmt: skip
            await _error_then_alive(client, {"type": "barge_in", "playMs": 5}, "bad_request",
                                    "unknown field 'playMs'")  # fmt: skip
            await _error_then_alive(client, {"type": "barge_in", "playedMs": -1}, "bad_request",
                                    "playedMs")  # fmt: skip
            await client.send({"type": "hold"})
            await wait_message(client, turn("held"))
            await _error_then_alive(client, {"type": "hold"}, "bad_request", "already held")
            await client.send({"type": "allow_next"})
            await wait_message(client, turn("released"))
            # Still a working conversation.
            await client.user_message("hello")
            done = await wait_message(client, of_type("response_done"), timeout=30)
            assert done["status"] == "completed"


async def test_elevenlabs_says_what_it_cannot_steer(make_settings, gateway_factory, tmp_path) -> None:
    """ElevenLabs decides turns on its side: the settings that need turn control are refused
    with a sentence, `hold` is `unsupported`, and what does apply (the utterance limit,
    `barge_in`, the turn events) still works."""
    async with gateway_with("elevenlabs", make_settings, gateway_factory, tmp_path) as (gw, _):
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True, turnDetection={**POLICY, "maxUtteranceMs": 9000})
            assert ready["capabilities"]["turnControl"] is False
            taking = ready["turnTaking"]
            assert taking["interruption"] == "engine" and taking["hold"] is False
            assert taking["maxUtteranceMs"] == 9000 and taking["interruptMinMs"] == 0
            note = await wait_message(client, of_type("error", code="unsupported"))
            assert "interruptMinMs" in note["message"] and "interruptMinWords" in note["message"]
            assert note["fatal"] is False
            await _error_then_alive(client, {"type": "hold"}, "unsupported", "elevenlabs")
            await _error_then_alive(client, {"type": "allow_next"}, "bad_request", "not held")
            await client.user_message("hello")
            await wait_message(client, of_type("response_done"), timeout=30)
            assert "assistant_turn_started" in turns_seen(client)
