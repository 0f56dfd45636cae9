"""The load generator: N concurrent real-time voice sessions in one process.

Each session sends a 20 ms PCM16 frame at 24 kHz every 20 ms on an absolute schedule (a
microphone does not wait for the network), with (session, sequence, send time) written into
the first bytes of the PCM. The echo upstream sends the audio back; the round trip of every
frame is read from the stamp when it returns. Sessions start spread evenly over one frame
period so the load is smooth, like independent users.

It speaks either OpenAI Realtime GA events (direct to the upstream, through the raw relay, or
to voxgate's OpenAI-compatible `/v1/realtime`) or voxgate protocol v1 (binary frames, or
base64 JSON with `--json-audio`). It also samples CPU and RSS of the processes it is told to
watch, because it knows exactly when the measurement window starts and ends.

Scenarios: `relay` (round trips under load), `memory` (RSS as sessions are added, idle or
active), `connect` (time from connect to ready). The result is one JSON file (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voxgate.benchmarking import stamp as S
from voxgate.benchmarking._run import run_coroutine
from voxgate.benchmarking.procs import cores_between, raise_fd_limit, snapshot
from voxgate.benchmarking.stats import latency_summary

OPENAI_APPEND_PREFIX = b'{"type":"input_audio_buffer.append","audio":"'
VOXGATE_AUDIO_PREFIX = b'{"type":"audio_chunk","pcm16Base64":"'
JSON_SUFFIX = b'"}'
LATE_MS = 10.0
_OPENAI_SESSION = {
    "type": "realtime",
    "output_modalities": ["audio"],
    "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}},
    },
}


class HandshakeError(Exception):
    pass


@dataclass(slots=True)
class Session:
    sid: int
    ws: ClientConnection
    connect_ms: float
    sent: int = 0
    received: int = 0
    errors: int = 0


@dataclass
class Config:
    protocol: str  # openai | voxgate
    url: str
    json_audio: bool = False
    connect_concurrency: int = 32
    open_timeout: float = 60.0
    #: Offer permessage-deflate, as every browser does (`websockets` defaults aside).
    deflate: bool = False


@dataclass
class Recorder:
    """Round trips and send lateness inside the measurement window."""

    window_start_ns: int = 0
    window_end_ns: int = 1 << 62
    rtt_ns: list[int] = field(default_factory=list)
    #: Frames that came back while the window was open: the work the relay did in it.
    arrivals_in_window: int = 0
    lateness_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------------


async def open_session(cfg: Config, sid: int) -> Session:
    """Connect and complete the protocol's handshake; returns a ready session."""
    t0 = time.perf_counter()
    if cfg.protocol == "openai":
        ws = await connect(
            cfg.url,
            additional_headers={"Authorization": "Bearer sk-bench"},
            compression="deflate" if cfg.deflate else None,
            max_size=None,
            ping_interval=None,
            open_timeout=cfg.open_timeout,
            close_timeout=2,
        )
        try:
            await _await_type(ws, "session.created", cfg.open_timeout)
            await ws.send(orjson.dumps({"type": "session.update", "session": _OPENAI_SESSION}).decode())
            await _await_type(ws, "session.updated", cfg.open_timeout)
        except BaseException:
            await _close(ws)
            raise
    else:
        ws = await connect(
            cfg.url,
            subprotocols=["voxgate.v1"],  # type: ignore[list-item]
            compression="deflate" if cfg.deflate else None,
            max_size=None,
            ping_interval=None,
            open_timeout=cfg.open_timeout,
            close_timeout=2,
        )
        try:
            start = {"type": "start", "binary": not cfg.json_audio}
            await ws.send(orjson.dumps(start).decode())
            await _await_type(ws, "session_ready", cfg.open_timeout)
        except BaseException:
            await _close(ws)
            raise
    return Session(sid, ws, (time.perf_counter() - t0) * 1000.0)


async def _await_type(ws: ClientConnection, wanted: str, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            if isinstance(raw, bytes):
                continue
            event = orjson.loads(raw)
            etype = event.get("type")
            if etype == wanted:
                return event  # type: ignore[no-any-return]
            if etype == "error":
                raise HandshakeError(f"error while waiting for {wanted}: {raw[:300]}")


def _deflate_negotiated(ws: ClientConnection) -> bool:
    response = ws.response
    if response is None:
        return False
    return "permessage-deflate" in (response.headers.get("Sec-WebSocket-Extensions") or "")


async def _close(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 5)


async def open_many(cfg: Config, count: int, first_sid: int = 0) -> tuple[list[Session], list[str]]:
    """Open `count` sessions, `connect_concurrency` handshakes at a time."""
    gate = asyncio.Semaphore(cfg.connect_concurrency)
    failures: list[str] = []

    async def one(sid: int) -> Session | None:
        async with gate:
            try:
                return await open_session(cfg, sid)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:300])
                return None

    results = await asyncio.gather(*(one(first_sid + i) for i in range(count)))
    return [s for s in results if s is not None], failures


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


def _payload_builder(cfg: Config):  # type: ignore[no-untyped-def]
    b64 = base64.b64encode
    if cfg.protocol == "openai":
        prefix = OPENAI_APPEND_PREFIX
    elif cfg.json_audio:
        prefix = VOXGATE_AUDIO_PREFIX
    else:
        return None, False
    return (lambda frame: prefix + b64(frame) + JSON_SUFFIX), True


async def sender(
    cfg: Config,
    s: Session,
    t_first: float,
    t_end: float,
    rec: Recorder | None,
    period: float = S.FRAME_MS / 1000.0,
) -> None:
    """Send frames on an absolute schedule from `t_first` until `t_end`.

    A frame that leaves late is still sent (a microphone buffers, it never skips), and its
    lateness is recorded when it falls inside the window.
    """
    build, text = _payload_builder(cfg)
    frame = S.frame_template()
    send = s.ws.send
    perf = time.perf_counter
    perf_ns = time.perf_counter_ns
    sid = s.sid
    next_t = t_first
    seq = 0
    window_start = rec.window_start_ns / 1e9 if rec else 0.0
    lateness = rec.lateness_ms if rec else None
    try:
        while next_t < t_end:
            delay = next_t - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            now_ns = perf_ns()
            if lateness is not None and next_t >= window_start:
                lateness.append(now_ns / 1e6 - next_t * 1000.0)
            S.stamp(frame, sid, seq, now_ns)
            if build is None:
                await send(bytes(frame))
            else:
                await send(build(frame), text=text)
            s.sent += 1
            seq += 1
            next_t += period
    except ConnectionClosed:
        return


async def receiver(cfg: Config, s: Session, rec: Recorder | None) -> None:
    """Count returned frames and record their round trips."""
    perf_ns = time.perf_counter_ns
    read_b64 = S.read_stamp_b64
    read = S.read_stamp
    lo = rec.window_start_ns if rec else 0
    hi = rec.window_end_ns if rec else 0
    rtts = rec.rtt_ns if rec else None
    openai = cfg.protocol == "openai"
    try:
        async for msg in s.ws:
            now = perf_ns()
            t_ns: int | None = None
            if isinstance(msg, bytes):
                if openai:
                    msg = msg.decode()
                else:
                    t_ns = read(msg)[2]
            if t_ns is None:
                assert isinstance(msg, str)
                key = '"delta":"' if openai else '"chunkBase64":"'
                at = msg.find(key)
                if at >= 0:
                    t_ns = read_b64(msg, at + len(key))[2]
                else:
                    if '"error"' in msg:
                        s.errors += 1
                        if rec is not None and len(rec.error_samples) < 5:
                            rec.error_samples.append(msg[:300])
                    continue
            s.received += 1
            if rtts is not None:
                if lo <= t_ns < hi:
                    rtts.append(now - t_ns)
                if lo <= now < hi:
                    rec.arrivals_in_window += 1  # type: ignore[union-attr]
    except ConnectionClosed:
        return


class Watcher:
    """CPU between two marks and peak RSS, for the processes under test and this one."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, "loadgen": os.getpid()}
        self.procs = {name: psutil.Process(pid) for name, pid in self.pids.items()}
        self.peak_rss: dict[str, int] = dict.fromkeys(self.pids, 0)
        self._task: asyncio.Task[None] | None = None

    def rss(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                out[name] = proc.memory_info().rss
                self.peak_rss[name] = max(self.peak_rss[name], out[name])
        return out

    async def _sample(self) -> None:
        while True:
            self.rss()
            await asyncio.sleep(0.5)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


async def scenario_relay(
    cfg: Config, sessions: int, duration: float, warmup: float, drain: float, watch: dict[str, int]
) -> dict[str, Any]:
    watcher = Watcher(watch)
    watcher.start()
    t_connect = time.perf_counter()
    live, failures = await open_many(cfg, sessions)
    connect_s = time.perf_counter() - t_connect
    rec = Recorder()
    t_stream = time.perf_counter() + 0.3
    window_start = t_stream + warmup
    window_end = window_start + duration
    rec.window_start_ns = int(window_start * 1e9)
    rec.window_end_ns = int(window_end * 1e9)
    period = S.FRAME_MS / 1000.0
    n = max(1, len(live))
    receivers = [asyncio.create_task(receiver(cfg, s, rec)) for s in live]
    senders = [
        asyncio.create_task(sender(cfg, s, t_stream + period * i / n, window_end, rec))
        for i, s in enumerate(live)
    ]
    await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
    before = snapshot(watcher.pids)
    rss_start = watcher.rss()
    await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
    after = snapshot(watcher.pids)
    rss_end = watcher.rss()
    await asyncio.gather(*senders)
    sent = sum(s.sent for s in live)
    # Drain until everything is back, or nothing has come back for `drain` seconds (a frame
    # still queued somewhere is late, not lost; one that never comes is lost).
    received = sum(s.received for s in live)
    quiet_since = time.perf_counter()
    hard_stop = quiet_since + max(drain, 60.0)
    while received < sent and time.perf_counter() < hard_stop:
        await asyncio.sleep(0.05)
        now_received = sum(s.received for s in live)
        if now_received != received:
            received = now_received
            quiet_since = time.perf_counter()
        elif time.perf_counter() - quiet_since > drain:
            break
    drain_s = time.perf_counter() - window_end
    await asyncio.gather(*(_close(s.ws) for s in live))
    for task in receivers:
        task.cancel()
    await asyncio.gather(*receivers, return_exceptions=True)
    await watcher.stop()
    late = rec.lateness_ms
    cores = cores_between(before, after)
    window_s = after.t - before.t
    per_frame = {
        name: round(c * window_s * 1e6 / rec.arrivals_in_window, 2)
        for name, c in cores.items()
        if name != "machine" and rec.arrivals_in_window
    }
    return {
        "sessions": sessions,
        "connected": len(live),
        "connect_failures": len(failures),
        "connect_failure_samples": failures[:3],
        "connect_all_s": round(connect_s, 3),
        "duration_s": duration,
        "warmup_s": warmup,
        "frames_sent": sent,
        "frames_received": received,
        "lost_frames": sent - received,
        "deflate_negotiated": sum(1 for s in live if _deflate_negotiated(s.ws)),
        "errors": sum(s.errors for s in live),
        "error_samples": rec.error_samples,
        "rtt_ms": latency_summary([v / 1e6 for v in rec.rtt_ns]),
        "late_sends": sum(1 for x in late if x > LATE_MS),
        "sends_in_window": len(late),
        "send_lateness_ms": latency_summary(late),
        "drain_s": round(drain_s, 2),
        "frames_in_window": rec.arrivals_in_window,
        "cpu_cores": cores,
        "cpu_us_per_frame": per_frame,
        "rss_bytes_start": rss_start,
        "rss_bytes_end": rss_end,
        "rss_bytes_peak": watcher.peak_rss,
    }


async def scenario_memory(
    cfg: Config, steps: list[int], active: bool, active_fps: float, settle: float,
    watch: dict[str, int], target: str,
) -> dict[str, Any]:  # fmt: skip
    """RSS of `target` after each step of added sessions (idle: started and silent)."""
    watcher = Watcher(watch)
    live: list[Session] = []
    tasks: list[asyncio.Task[None]] = []
    points: list[dict[str, Any]] = []
    failures: list[str] = []
    period = 1.0 / active_fps if active else 0.0
    far = time.perf_counter() + 10**6
    try:
        for count in steps:
            if count > len(live):
                more, failed = await open_many(cfg, count - len(live), first_sid=len(live))
                failures += failed
                if active:
                    t0 = time.perf_counter() + 0.05
                    for i, s in enumerate(more):
                        tasks.append(asyncio.create_task(receiver(cfg, s, None)))
                        offset = period * i / max(1, len(more))
                        tasks.append(asyncio.create_task(sender(cfg, s, t0 + offset, far, None, period)))
                live += more
            await asyncio.sleep(settle)
            samples = []
            for _ in range(3):
                samples.append(watcher.rss().get(target, 0))
                await asyncio.sleep(0.25)
            point = {"sessions": len(live), "rss_bytes": sorted(samples)[1]}
            if active:
                point["frames_sent"] = sum(s.sent for s in live)
                point["frames_received"] = sum(s.received for s in live)
            points.append(point)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(_close(s.ws) for s in live))
    return {
        "mode": "active" if active else "idle",
        "active_fps": active_fps if active else 0,
        "points": points,
        "connect_failures": len(failures),
        "connect_failure_samples": failures[:3],
    }


async def scenario_connect(cfg: Config, sequential: int, burst: int) -> dict[str, Any]:
    """Connect-to-ready times: one at a time, then `burst` at once."""
    seq_ms: list[float] = []
    failures: list[str] = []
    for i in range(sequential):
        try:
            s = await open_session(cfg, i)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        seq_ms.append(s.connect_ms)
        await _close(s.ws)
    burst_cfg = Config(cfg.protocol, cfg.url, cfg.json_audio, connect_concurrency=max(1, burst))
    t0 = time.perf_counter()
    live, failed = await open_many(burst_cfg, burst, first_sid=sequential)
    burst_wall = time.perf_counter() - t0
    failures += failed
    burst_ms = [s.connect_ms for s in live]
    await asyncio.gather(*(_close(s.ws) for s in live))
    return {
        "sequential": latency_summary(seq_ms),
        "burst": {**latency_summary(burst_ms), "size": burst, "wall_s": round(burst_wall, 3)},
        "failures": len(failures),
        "failure_samples": failures[:3],
    }


# --------------------------------------------------------------------------------------------


def _parse_watch(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, pid = item.partition("=")
        out[name] = int(pid)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="voxgate benchmark load generator")
    parser.add_argument("--scenario", choices=["relay", "memory", "connect"], default="relay")
    parser.add_argument("--protocol", choices=["openai", "voxgate"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--json-audio", action="store_true")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=3.0)
    parser.add_argument("--connect-concurrency", type=int, default=32)
    parser.add_argument("--steps", default="0,100,200,300,400,500")
    parser.add_argument("--active", action="store_true")
    parser.add_argument("--active-fps", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--watch", action="append", default=[], help="name=pid")
    parser.add_argument("--target", default="gateway")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    raise_fd_limit()
    cfg = Config(args.protocol, args.url, args.json_audio, args.connect_concurrency,
                 deflate=args.deflate)  # fmt: skip
    watch = _parse_watch(args.watch)
    if args.scenario == "relay":
        coro = scenario_relay(cfg, args.sessions, args.duration, args.warmup, args.drain, watch)
    elif args.scenario == "memory":
        steps = [int(x) for x in args.steps.split(",") if x.strip()]
        coro = scenario_memory(cfg, steps, args.active, args.active_fps, args.settle, watch, args.target)
    else:
        coro = scenario_connect(cfg, args.sequential, args.burst)
    result = run_coroutine(coro)
    with open(args.out, "wb") as fh:
        fh.write(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
