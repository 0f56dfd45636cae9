"""voxgate under test: the real app on the real uvicorn server, in its own process.

The same steps as `voxgate serve` (settings from the environment, logging, `create_app`,
`VoxgateServer` with `uvicorn_config`), except that it binds port 0 and prints `PORT <n>` once
listening, and that it ignores any `.env` file so the benchmark's environment is the whole truth.

    VOXGATE_ENGINE=openai VOXGATE_OPENAI_URL=ws://127.0.0.1:<echo> OPENAI_API_KEY=sk-bench \\
        python -m voxgate.benchmarking.gateway_proc
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import time

from voxgate.benchmarking._run import run_coroutine
from voxgate.benchmarking.procs import announce_port, raise_fd_limit
from voxgate.config import Settings
from voxgate.gateway.app import create_app
from voxgate.gateway.outbox import Outbox, OutboxFactory
from voxgate.gateway.server import VoxgateServer, uvicorn_config
from voxgate.gateway.state import SessionTuning
from voxgate.logs import configure_logging

#: Experiment knobs (not settings of voxgate itself): `VOXGATE_BENCH_GC_FREEZE=1` moves every
#: object alive after startup out of the collector's reach (`gc.freeze()`), and
#: `VOXGATE_BENCH_GC_STATS=1` prints the collector's pauses to stderr at exit, to test whether
#: collections of the app's large, long-lived object graph stall the event loop.
GC_FREEZE = os.environ.get("VOXGATE_BENCH_GC_FREEZE") == "1"
#: `VOXGATE_BENCH_GC_THRESHOLD=700,10,10` sets `gc.set_threshold` (`0` disables the collector).
GC_THRESHOLD = os.environ.get("VOXGATE_BENCH_GC_THRESHOLD")
GC_STATS = os.environ.get("VOXGATE_BENCH_GC_STATS") == "1"
FAST_OUTBOX = os.environ.get("VOXGATE_BENCH_FAST_OUTBOX") == "1"
#: `VOXGATE_BENCH_WS=websockets|websockets-sansio|wsproto`: uvicorn's WebSocket implementation
#: (default: what `voxgate serve` uses, uvicorn's `auto`, which is websockets-sansio).
WS_IMPL = os.environ.get("VOXGATE_BENCH_WS")


class _GcPauses:
    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.perf_counter() - self.started) * 1000)

    def summary(self) -> str:
        parts = []
        for gen, ms in self.pauses.items():
            if ms:
                parts.append(f"gen{gen}: n={len(ms)} total={sum(ms):.0f}ms max={max(ms):.1f}ms")
        return "GC " + "; ".join(parts)


class _AnnouncingServer(VoxgateServer):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if GC_FREEZE:
            gc.collect()
            gc.freeze()
        if self.servers:
            announce_port(self.servers[0].sockets[0].getsockname()[1])


def _tuning() -> SessionTuning:
    """Experiment knobs from the environment: `VOXGATE_BENCH_WATCHDOG_SCALE` stretches the
    session watchdog's 1 s tick (it wakes every session once a second, all in step since they
    connected together); `VOXGATE_BENCH_FAST_OUTBOX=1` tries the inline-send outbox."""
    scale = float(os.environ.get("VOXGATE_BENCH_WATCHDOG_SCALE", "1"))
    outbox_factory: OutboxFactory = Outbox
    if FAST_OUTBOX:
        from voxgate.benchmarking.fast_outbox import FastOutbox

        outbox_factory = FastOutbox
    return SessionTuning(outbox_factory=outbox_factory, watchdog_tick_s=1.0 * scale)


def main() -> None:
    raise_fd_limit()
    settings = Settings(_env_file=None, host="127.0.0.1", port=0)  # type: ignore[call-arg]
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, tuning=_tuning())
    config = uvicorn_config(app, settings, port=0)
    config.backlog = 4096
    if WS_IMPL:
        config.ws = WS_IMPL
    server = _AnnouncingServer(config)
    pauses = _GcPauses()
    if GC_THRESHOLD:
        gc.set_threshold(*(int(x) for x in GC_THRESHOLD.split(",")))
    if GC_STATS:
        gc.callbacks.append(pauses)
    try:
        run_coroutine(server.serve())
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the SIGINT that stopped it
    finally:
        if GC_STATS:
            print(pauses.summary(), file=sys.stderr)
        if FAST_OUTBOX:
            from voxgate.benchmarking.fast_outbox import COUNTS

            print(f"fast outbox: {COUNTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
