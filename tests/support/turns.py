"""Gateways with each engine against its simulator, and the sounds turn-taking tests make.

Every engine runs behind a real gateway on an ephemeral port and is driven by `VoxgateClient`
over a real socket: OpenAI and ElevenLabs against their shipped simulators, the cascade with
its offline parts (pocketsphinx constrained by a small grammar, so what it hears is exact;
webrtcvad, which passes noise on for the arbiter to judge).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.client import VoxgateClient
from voxgate.testing.elevenlabs_sim import ElevenLabsSim, SimAgent
from voxgate.testing.openai_live_sim import OpenAILiveSimulator
from voxgate.testing.openai_sim import OpenAISimulator
from voxgate.testing.speech import silence, synthesize

KEY = "sk-turns-0123456789"
XI_KEY = "xi-turns-0123456789"
#: Asked for by a typed message: a reply that plays for several seconds.
LONG = "please read this long sentence aloud so that the reply lasts for several seconds at least"
LONG_REPLY = (
    "Here is a long answer that goes on for quite a while, so that there is plenty of time to "
    "talk over it, cough over it, or agree with it while it is still playing."
)
SENTENCE = "wait stop i have a question about that"
BACKCHANNEL = "mm hmm"
PHRASES = ["what time is it", "hello", "mm", "yeah", SENTENCE]


def grammar(path: Path) -> str:
    """A JSGF grammar for the cascade's recogniser: the test phrases, any number in a row."""
    path.write_text(
        "#JSGF V1.0;\ngrammar turns;\npublic <utterance> = <phrase>+;\n"
        f"<phrase> = {' | '.join(PHRASES)};\n"
    )
    return str(path)


def covering_reply(items: list[dict[str, Any]]) -> str:
    """The OpenAI simulator's answer: what the user said since the assistant last spoke (all
    of it, so a test sees one reply cover several held turns), or a long answer on request."""
    said: list[str] = []
    for item in reversed(items):
        if item.get("type") != "message":
            continue
        if item.get("role") == "assistant":
            break
        if item.get("role") == "user":
            for part in item.get("content") or []:
                text = (part.get("text") or part.get("transcript") or "").strip()
                if text:
                    said.append(text)
    said.reverse()
    if any("long" in text.lower() for text in said):
        return LONG_REPLY
    return "You said: " + " ".join(said) if said else "Hello!"


def elevenlabs_reply(text: str) -> str:
    return LONG_REPLY if "long" in text.lower() else f"You said: {text}."


@contextlib.asynccontextmanager
async def gateway_with(
    engine: str,
    make_settings: Callable[..., Any],
    gateway_factory: Callable[..., Any],
    tmp_path: Path,
    *,
    transcripts: list[str] | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[Any, Any]]:
    """(gateway, simulator or None) for `engine`; `transcripts` script what a simulator hears,
    utterance by utterance (the cascade really recognises)."""
    heard = transcripts or ["hello"]
    if engine == "openai":
        async with OpenAISimulator(
            keys=[KEY], pace=4.0, transcript=list(heard), responder=covering_reply
        ) as sim:
            settings = make_settings(engine="openai", openai_api_key=KEY, openai_url=sim.url,
                                     **overrides)  # fmt: skip
            async with gateway_factory(settings) as gw:
                yield gw, sim
    elif engine == "openai-live":
        async with OpenAILiveSimulator(keys=[KEY], transcript=list(heard)) as sim:
            settings = make_settings(engine="openai-live", openai_api_key=KEY,
                                     openai_live_url=sim.url, **overrides)  # fmt: skip
            async with gateway_factory(settings) as gw:
                yield gw, sim
    elif engine == "elevenlabs":
        agent = SimAgent(agent_id="agent_turns")
        async with ElevenLabsSim(
            api_key=XI_KEY, agents=[agent], pace=4.0, transcripts=list(heard), reply=elevenlabs_reply
        ) as sim:
            settings = make_settings(
                engine="elevenlabs", elevenlabs_api_key=XI_KEY, elevenlabs_agent_id="agent_turns",
                elevenlabs_api_base=sim.api_base, elevenlabs_url=sim.ws_url, **overrides,
            )  # fmt: skip
            async with gateway_factory(settings) as gw:
                yield gw, sim
    else:
        # webrtcvad, not the default Silero: these tests are about the gateway's arbiter, so
        # the VAD must pass a loud cough on as speech (Silero rightly hears none, and the
        # arbiter would have nothing to filter) and must not find breaths inside a monologue.
        overrides.setdefault("vad", "webrtc")
        settings = make_settings(engine="cascade", stt_grammar=grammar(tmp_path / "t.jsgf"),
                                 **overrides)  # fmt: skip
        async with gateway_factory(settings) as gw:
            yield gw, None


# --- sounds ----------------------------------------------------------------------------------


def speech(text: str, rate: int, *, before_ms: int = 200, after_ms: int = 1200) -> bytes:
    """`text` spoken, with silence around it (the silence after lets a VAD end the turn)."""
    return silence(before_ms, rate) + synthesize(text, rate) + silence(after_ms, rate)


def noise(ms: int, rate: int, *, level: float = 0.15, seed: int = 7) -> bytes:
    """A burst of loud broadband noise (a cough, a bump), `level` of full scale RMS."""
    rng = np.random.default_rng(seed)
    n = rate * ms // 1000
    samples = np.clip(rng.normal(0.0, level * 32768, n), -32768, 32767).astype("<i2")
    return samples.tobytes()


def monologue(seconds: float, rate: int) -> bytes:
    """Speech without a pause long enough to end a turn, for about `seconds`."""
    one = synthesize(" ".join(["what time is it"] * 6), rate)
    repeats = int(seconds * rate * 2 / len(one)) + 1
    return (one * repeats)[: int(seconds * rate) * 2]


# --- reading what the client got -------------------------------------------------------------


async def wait_message(
    client: VoxgateClient, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    """The first message, already received or still to come, that matches `predicate`."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        for message in client.received[seen:]:
            if predicate(message):
                return message
        seen = len(client.received)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            kinds = [_short(m) for m in client.received[-30:]]
            raise TimeoutError(f"no matching message within {timeout} s; last: {kinds}")
        try:
            await client.recv(remaining)
        except TimeoutError:
            continue


def turn(event: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    def match(message: dict[str, Any]) -> bool:
        return (
            message.get("type") == "turn"
            and message.get("event") == event
            and all(message.get(k) == v for k, v in fields.items())
        )

    return match


def of_type(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    def match(message: dict[str, Any]) -> bool:
        return message.get("type") == kind and all(message.get(k) == v for k, v in fields.items())

    return match


def turns_seen(client: VoxgateClient) -> list[str]:
    return [m["event"] for m in client.received if m.get("type") == "turn"]


def messages(client: VoxgateClient, kind: str) -> list[dict[str, Any]]:
    return [m for m in client.received if m.get("type") == kind]


async def drain(client: VoxgateClient, ping_id: str) -> None:
    """Read everything the gateway sent so far (it answers a ping after what it queued)."""
    await client.ping(ping_id)
    await wait_message(client, of_type("pong", id=ping_id), timeout=15)


def _short(message: dict[str, Any]) -> str:
    kind = str(message.get("type"))
    if kind == "turn":
        return f"turn:{message.get('event')}"
    if kind in ("error", "transcript", "response_done"):
        detail = message.get("code") or message.get("status") or message.get("text")
        return f"{kind}:{detail}"
    return kind


async def until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (e.g. a simulator saw an event)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)
