"""Turn-taking: barge-in latency and false stops, per engine, with its simulator.

Each trial is one `/ws` session on an in-process gateway, driven like a browser would: a typed
question gets a long spoken reply; 0.6 s into its audio the "user" makes a sound, streamed in
real time as 20 ms frames, then silence. The sounds are a scripted set of 50 interruptions
(five real sentences, ten times each) and 50 non-interruptions (backchannels "mm hmm", "yeah",
"right", "okay"; 100-200 ms coughs; 300-700 ms bursts of noise).

What the client hears decides, as the browser client acts on it:

- **stopped**: the client stops playback on the first `turn` `assistant_paused` or `interrupted`
  of the reply (and, when the engine decides barge-in itself, `interruption: "engine"`, on
  `user_speaking: true`, which is when the browser client flushes);
- **barge-in latency** (interruptions): the first voiced sample sent -> that first stop signal
  received. For the gateway's judged mode also the time to the final `interrupted`;
- **false stop** (non-interruptions): the reply was cut (`interrupted`, or in engine mode any
  stop signal: the client flushed its buffer). A pause that resumed is counted apart
  (`falsePauses`): the reply went on from where it paused.

Configurations: the engines in their default mode (`engine`: as before the arbiter) and, where
the engine has turn control, the gateway's judged mode (`interruptMinMs` 250,
`interruptMinWords` 1). The OpenAI simulator and the cascade (on webrtcvad, which passes noise on
as speech) hear the user with pocketsphinx bound to a grammar of the sentences and backchannel
words (real recognition, errors included); the ElevenLabs simulator's words do not matter here
(its agent stops at speech start).

Run: `python benchmarks/turn_taking.py [--trials 50] [--concurrency 4] [--configs ...]`
(prints JSON and a table, writes `benchmarks/results/turn_taking-<UTC>.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.audio import bytes_for_ms, rms_dbfs
from voxgate.client import VoxgateClient
from voxgate.config import Settings
from voxgate.testing.elevenlabs_sim import ElevenLabsSim, SimAgent
from voxgate.testing.gateway import running_gateway
from voxgate.testing.openai_sim import OpenAISimulator
from voxgate.testing.speech import silence, synthesize

RATE = 24000
FRAME_MS = 20
SENTENCES = [
    "wait stop i have a question about that",
    "hold on please tell me the time",
    "sorry can you say that again",
    "no that is not what i meant",
    "actually let me ask something else",
]
BACKCHANNELS = ["mm hmm", "yeah", "right", "okay"]
QUESTION = (
    "please tell me a long story about a lighthouse keeper who lived alone on a small island "
    "far away from the coast and kept the light burning every single night for forty years"
)
JUDGED = {"interruptMinMs": 250, "interruptMinWords": 1}
CONFIGS = {
    "openai-engine": ("openai", {}),
    "openai-judged": ("openai", JUDGED),
    "cascade-engine": ("cascade", {}),
    "cascade-judged": ("cascade", JUDGED),
    "elevenlabs-engine": ("elevenlabs", {}),
}


@dataclass
class Stimulus:
    kind: str  # sentence | backchannel | cough | noise
    label: str
    pcm: bytes  # at RATE

    @property
    def interruption(self) -> bool:
        return self.kind == "sentence"


@dataclass
class Trial:
    kind: str
    label: str
    stopped: bool = False
    paused: bool = False
    resumed: bool = False
    cut: bool = False
    stop_ms: float | None = None  # first voiced sample -> first stop signal
    cut_ms: float | None = None  # first voiced sample -> `interrupted`
    pause_ms: float | None = None  # how long a resumed pause held the reply
    error: str | None = None


@dataclass
class ConfigResult:
    name: str
    engine: str
    turn_detection: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)


def stimuli(n_each: int) -> list[Stimulus]:
    """`n_each` interruptions and `n_each` non-interruptions, interleaved."""
    rng = np.random.default_rng(21)
    hits = [Stimulus("sentence", s, synthesize(s, RATE)) for s in SENTENCES]
    others: list[Stimulus] = []
    for i in range(n_each):
        slot = i % 5
        if slot in (0, 1):
            word = BACKCHANNELS[(i // 5 * 2 + slot) % len(BACKCHANNELS)]
            others.append(Stimulus("backchannel", word, synthesize(word, RATE)))
        elif slot in (2, 3) and i % 2:
            ms = int(rng.integers(100, 201))
            others.append(Stimulus("cough", f"cough {ms} ms", _burst(rng, ms, 0.2)))
        else:
            ms = int(rng.integers(300, 701))
            others.append(Stimulus("noise", f"noise {ms} ms", _burst(rng, ms, 0.08)))
    out: list[Stimulus] = []
    for i in range(n_each):
        out.append(hits[i % len(hits)])
        out.append(others[i])
    return out


def _burst(rng: np.random.Generator, ms: int, level: float) -> bytes:
    n = RATE * ms // 1000
    envelope = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (RATE * 0.01))
    samples = rng.normal(0.0, level * 32768, n) * envelope
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def _grammar(folder: Path) -> str:
    path = folder / "turns.jsgf"
    phrases = " | ".join([*SENTENCES, "mm", "hmm", "yeah", "right", "okay"])
    path.write_text(f"#JSGF V1.0;\ngrammar turns;\npublic <u> = <p>+;\n<p> = {phrases};\n")
    return str(path)


@contextlib.asynccontextmanager
async def gateway_for(engine: str, folder: Path) -> AsyncIterator[str]:
    """The `/ws` URL of a gateway running `engine` against its simulator."""
    base: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "engine": engine, "shutdown_deadline_s": 3.0,
        "database_url": f"sqlite+aiosqlite:///{folder / (engine + '.db')}",
        "control_messages_per_min": 10_000, "max_sessions_per_user": 100,
    }  # fmt: skip
    grammar = _grammar(folder)
    if engine == "openai":
        async with OpenAISimulator(keys=["sk-bench"], pace=4.0, pocketsphinx=True, grammar=grammar) as sim:
            settings = Settings(_env_file=None, openai_api_key="sk-bench", openai_url=sim.url, **base)  # type: ignore[call-arg]
            async with running_gateway(settings) as gw:
                yield gw.ws_url
    elif engine == "elevenlabs":
        agent = SimAgent(agent_id="agent_bench")
        async with ElevenLabsSim(api_key="xi-bench", agents=[agent], pace=4.0, transcript="hello",
                                 reply=lambda text: "Here is a long answer. " * 12) as sim:  # fmt: skip
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None, elevenlabs_api_key="xi-bench", elevenlabs_agent_id="agent_bench",
                elevenlabs_api_base=sim.api_base, elevenlabs_url=sim.ws_url, **base,
            )  # fmt: skip
            async with running_gateway(settings) as gw:
                yield gw.ws_url
    else:
        # webrtcvad, as when docs/benchmarks.md §7 was measured: it passes coughs on as speech,
        # so the arbiter (not the VAD) is what decides a false stop here.
        settings = Settings(_env_file=None, stt_grammar=grammar, vad="webrtc", **base)  # type: ignore[call-arg]
        async with running_gateway(settings) as gw:
            yield gw.ws_url


async def run_trial(url: str, stimulus: Stimulus, turn_detection: dict[str, Any]) -> Trial:
    trial = Trial(stimulus.kind, stimulus.label)
    try:
        async with asyncio.timeout(60):
            await _trial(url, stimulus, turn_detection, trial)
    except Exception as exc:  # one failed trial is reported, not fatal to the run
        trial.error = f"{type(exc).__name__}: {exc}"
    return trial


async def _trial(url: str, stimulus: Stimulus, turn_detection: dict[str, Any], trial: Trial) -> None:
    async with VoxgateClient(url) as client:
        ready = await client.start(binary=True, turnDetection=turn_detection)
        judged = ready.get("turnTaking", {}).get("interruption") == "gateway"
        arrivals: list[tuple[float, dict[str, Any]]] = []
        reader = asyncio.create_task(_read(client, arrivals))
        try:
            await client.user_message(QUESTION)
            item = await _wait(arrivals, lambda m: m["type"] == "speaking" and m.get("isSpeaking"))
            item_id = item["itemId"]
            await asyncio.sleep(0.6)  # the reply is playing
            lead = silence(200, RATE)
            t_voice = await _stream(client, lead + stimulus.pcm + silence(2000, RATE), len(lead))
            await _settle(arrivals, t_voice)
            _score(trial, arrivals, item_id, judged, t_voice)
            await client.stop()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _read(client: VoxgateClient, arrivals: list[tuple[float, dict[str, Any]]]) -> None:
    while True:
        message = await client.recv()
        if message["type"] != "audio":
            arrivals.append((time.monotonic(), message))


async def _wait(arrivals: list[tuple[float, dict[str, Any]]], predicate: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, message in arrivals:
            if predicate(message):
                return message
        await asyncio.sleep(0.01)
    raise TimeoutError("no matching message")


async def _stream(client: VoxgateClient, pcm: bytes, lead_bytes: int) -> float:
    """Send `pcm` in real time as 20 ms frames; returns when the first voiced frame went out."""
    step = bytes_for_ms(FRAME_MS, RATE)
    start = time.monotonic()
    t_voice: float | None = None
    for n, i in enumerate(range(0, len(pcm), step)):
        delay = start + n * FRAME_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = pcm[i : i + step]
        if t_voice is None and i >= lead_bytes and rms_dbfs(frame) > -45:
            t_voice = time.monotonic()
        await client.send_audio(frame)
    return t_voice if t_voice is not None else start + lead_bytes / 2 / RATE


async def _settle(arrivals: list[tuple[float, dict[str, Any]]], t_voice: float) -> None:
    """The sound and two seconds of silence are sent: wait (bounded) for a pause still
    pending to be resolved (resumed, or cut)."""
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        after = [m for t, m in arrivals if t >= t_voice]
        events = {m.get("event") for m in after if m["type"] == "turn"}
        cut = any(m["type"] == "interrupted" for m in after)
        if cut or "assistant_paused" not in events or "assistant_resumed" in events:
            return
        await asyncio.sleep(0.02)


def _score(trial: Trial, arrivals: list[tuple[float, dict[str, Any]]], item_id: str, judged: bool, t_voice: float) -> None:
    paused_at = t_voice
    for t, m in arrivals:
        if t < t_voice:
            continue
        kind = m["type"]
        stop = (
            (kind == "interrupted" and m.get("itemId") == item_id)
            or (kind == "turn" and m.get("event") == "assistant_paused")
            or (not judged and kind == "user_speaking" and m.get("isSpeaking"))
        )
        if stop and trial.stop_ms is None:
            trial.stopped = True
            trial.stop_ms = (t - t_voice) * 1000
        if kind == "interrupted" and m.get("itemId") == item_id and trial.cut_ms is None:
            trial.cut = True
            trial.cut_ms = (t - t_voice) * 1000
        if kind == "turn" and m.get("event") == "assistant_paused" and not trial.paused:
            trial.paused, paused_at = True, t
        if kind == "turn" and m.get("event") == "assistant_resumed" and trial.paused:
            trial.resumed = True
            trial.pause_ms = (t - paused_at) * 1000


def summarize(result: ConfigResult) -> dict[str, Any]:
    hits = [t for t in result.trials if t.kind == "sentence" and not t.error]
    misses = [t for t in result.trials if t.kind != "sentence" and not t.error]
    judged = bool(result.turn_detection)

    def false_stop(t: Trial) -> bool:
        return t.cut if judged else t.stopped

    latencies = [t.stop_ms for t in hits if t.stop_ms is not None]
    cuts = [t.cut_ms for t in hits if t.cut_ms is not None]
    pauses = [t.pause_ms for t in misses if t.pause_ms is not None]
    by_kind: dict[str, str] = {}
    for kind in ("backchannel", "cough", "noise"):
        group = [t for t in misses if t.kind == kind]
        by_kind[kind] = f"{sum(false_stop(t) for t in group)}/{len(group)}"
    return {
        "config": result.name,
        "engine": result.engine,
        "turnDetection": result.turn_detection,
        "interruptions": len(hits),
        "stopped": sum(t.stopped for t in hits),
        "bargeInLatencyMs": _quantiles(latencies),
        "cutLatencyMs": _quantiles(cuts),
        "nonInterruptions": len(misses),
        "falseStops": sum(false_stop(t) for t in misses),
        "falseStopRate": round(sum(false_stop(t) for t in misses) / max(1, len(misses)), 3),
        "falseStopsByKind": by_kind,
        "falsePauses": sum(t.paused and t.resumed for t in misses),
        "pauseMs": _quantiles(pauses),
        "errors": [t.error for t in result.trials if t.error],
    }


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"p50": round(statistics.median(ordered), 1), "p90": round(p90, 1), "max": round(ordered[-1], 1)}


async def run_config(name: str, trials: list[Stimulus], concurrency: int, folder: Path) -> ConfigResult:
    engine, turn_detection = CONFIGS[name]
    result = ConfigResult(name, engine, dict(turn_detection))
    async with gateway_for(engine, folder) as url:
        gate = asyncio.Semaphore(concurrency)

        async def one(stimulus: Stimulus) -> Trial:
            async with gate:
                return await run_trial(url, stimulus, turn_detection)

        result.trials = list(await asyncio.gather(*(one(s) for s in trials)))
    return result


def _row(s: dict[str, Any]) -> str:
    lat = s["bargeInLatencyMs"] or {}
    pauses = s["pauseMs"] or {}
    return (
        f"| {s['config']} | {s['stopped']}/{s['interruptions']} | {lat.get('p50', '-')} | "
        f"{lat.get('p90', '-')} | {s['falseStops']}/{s['nonInterruptions']} "
        f"({s['falseStopRate'] * 100:.0f}%) | {s['falseStopsByKind']['backchannel']} | "
        f"{s['falseStopsByKind']['cough']} | {s['falseStopsByKind']['noise']} | "
        f"{s['falsePauses']} | {pauses.get('p50', '-')} |"
    )


async def measure(trials: list[Stimulus], configs: list[str], concurrency: int) -> list[dict[str, Any]]:
    summaries = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            started = time.monotonic()
            result = await run_config(name, trials, concurrency, Path(tmp))
            summary = summarize(result)
            summary["seconds"] = round(time.monotonic() - started, 1)
            summary["trials"] = [asdict(t) for t in result.trials]
            summaries.append(summary)
            print(json.dumps({k: v for k, v in summary.items() if k != "trials"}), flush=True)
    return summaries


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=50, help="interruptions (and as many non-interruptions)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    summaries = asyncio.run(measure(stimuli(args.trials), args.configs.split(","), args.concurrency))
    print("\n| config | stopped | latency p50 ms | p90 ms | false stops | backchannel | cough | noise | paused+resumed | pause p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for summary in summaries:
        print(_row(summary))
    report = {"benchmark": "turn_taking", "at": datetime.now(UTC).isoformat(), "trials": args.trials,
              "concurrency": args.concurrency, "results": summaries}  # fmt: skip
    if not args.no_save:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        (out / f"turn_taking-{stamp}.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
