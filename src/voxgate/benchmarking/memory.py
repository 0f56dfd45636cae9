"""Benchmark 3: gateway memory per idle and per active session (RSS slope).

Sessions are added in steps (default 0, 100, ..., 500) to one voxgate process, and its RSS is
read after each step has settled; the least-squares slope is the memory one more session costs.

- idle: connected and started (`session_ready`, an upstream socket open), no audio;
- active: audio flowing both ways through every buffer of every session. To stay below this
  2-core machine's CPU ceiling at 500 sessions (where a backlog would be measured instead of
  per-session state), active sessions send one 20 ms frame every 1/`active_fps` s (default 10/s,
  a fifth of real time); `--active-fps 50` runs them at full real time.
"""

from __future__ import annotations

from typing import Any

from voxgate.benchmarking.relay import echo_upstream, gateway, run_loadgen
from voxgate.benchmarking.stats import slope


def memory_benchmark(
    steps: list[int], modes: list[str], active_fps: float = 10.0, settle: float = 2.0
) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": steps, "modes": {}}
    for mode in modes:
        with echo_upstream() as echo, gateway(echo.port) as gw:
            args = [
                "--scenario", "memory", "--protocol", "voxgate",
                "--url", f"ws://127.0.0.1:{gw.port}/ws",
                "--steps", ",".join(str(s) for s in steps), "--settle", str(settle),
                "--watch", f"gateway={gw.pid}", "--target", "gateway",
                "--active-fps", str(active_fps),
            ]  # fmt: skip
            if mode == "active":
                args.append("--active")
            result = run_loadgen(args, timeout=300 + max(steps) * 0.5)
        points = result["points"]
        per_session, intercept = slope(
            [p["sessions"] for p in points], [p["rss_bytes"] for p in points]
        )
        result["bytes_per_session"] = None if per_session != per_session else round(per_session)
        result["kib_per_session"] = (
            None if per_session != per_session else round(per_session / 1024, 1)
        )
        result["baseline_rss_bytes"] = round(intercept)
        out["modes"][mode] = result
    return out
