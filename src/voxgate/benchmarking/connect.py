"""Benchmark 4: time from WebSocket connect to `session_ready`.

Measured one connection at a time (the unloaded path: handshake, `start` parsing, engine
creation, the upstream dial and `session.update`/`session.updated`, the conversation row in
SQLite) and as a burst of concurrent connections. The same handshake straight to the echo
upstream (connect to `session.updated`) is the baseline: the part voxgate cannot avoid.
A third run keeps the conversations in an in-memory SQLite database, which isolates what the
durable conversation row (a file, WAL, an fsync per commit) adds to the handshake.
"""

from __future__ import annotations

from typing import Any

from voxgate.benchmarking.relay import OPENAI_PATH, echo_upstream, gateway, run_loadgen
from voxgate.benchmarking.stats import ratio


def connect_benchmark(sequential: int, burst: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with echo_upstream() as echo:
        base = ["--scenario", "connect", "--sequential", str(sequential), "--burst", str(burst)]
        out["direct"] = run_loadgen(
            [*base, "--protocol", "openai", "--url", f"ws://127.0.0.1:{echo.port}{OPENAI_PATH}"],
            timeout=120 + burst,
        )
        with gateway(echo.port) as gw:
            out["voxgate"] = run_loadgen(
                [*base, "--protocol", "voxgate", "--url", f"ws://127.0.0.1:{gw.port}/ws"],
                timeout=120 + burst,
            )
        with gateway(echo.port, VOXGATE_DATABASE_URL="sqlite+aiosqlite:///:memory:") as gw:
            out["voxgate_memory_db"] = run_loadgen(
                [*base, "--protocol", "voxgate", "--url", f"ws://127.0.0.1:{gw.port}/ws"],
                timeout=120 + burst,
            )
    out["ratios"] = {
        "sequential_p50": ratio(out["voxgate"]["sequential"]["p50"], out["direct"]["sequential"]["p50"]),
        "burst_p50": ratio(out["voxgate"]["burst"]["p50"], out["direct"]["burst"]["p50"]),
    }
    return out
