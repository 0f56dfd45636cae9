"""Turn-taking the app can steer, through a real gateway, for every engine its capabilities allow.

What a user of `/ws` relies on: `hold` keeps the assistant quiet across utterances and
`allow_next` answers them in one reply; a cough, noise or an "mm-hmm" over the assistant does
not stop it (it may pause and resume), a real sentence does; an endless monologue is ended at
`maxUtteranceMs`; `barge_in` stops the audio and truncates the turn where the listener was;
out-of-turn requests get clear non-fatal errors. OpenAI and the cascade steer turns
(`turnControl`); ElevenLabs decides on its side, which the gateway says rather than pretends.
"""

from __future__ import annotations

import pytest

from tests.support.turns import (
    LONG,
    SENTENCE,
    drain,
    gateway_with,
    messages,
    of_type,
    speech,
    turn,
    wait_message,
)
from voxgate.client import VoxgateClient

STEERED = ["openai", "cascade"]
ALL = ["openai", "cascade", "elevenlabs"]
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
            await client.send({"type": "hold"})
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
            await client.send({"type": "allow_next", "respond": True})
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
