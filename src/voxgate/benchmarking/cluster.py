"""Benchmark: the gateway as a cluster. Not a test: numbers for docs/benchmarks.md.

1. The relay load of `voxgate bench relay` through HAProxy (`deploy/haproxy.cfg`, its
   addresses changed) to `voxgate serve --workers 1` and `--workers 2` on this machine, both on
   Redis: CPU per frame summed over the worker processes, round-trip p50/p99, lost frames.
2. Connect -> `session_ready` on one gateway process with the memory shared state against
   Redis: what the shared checks (a token bucket, a lease script, the directory entry) add.

Every process is fresh: Debian's `redis-server` and `haproxy`, the echo upstream, the workers.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from voxgate.benchmarking.relay import echo_upstream, gateway, gateway_env, run_loadgen

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout} s")


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it)")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-redis-") as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            def answers() -> bool:
                with socket.create_connection(("127.0.0.1", port), 1):
                    return True

            _wait(answers, "redis")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait(30)


def haproxy_config(front_port: int, gateway_port: int) -> str:
    """deploy/haproxy.cfg in front of one port (the workers share it)."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    text = text.replace("bind :80", f"bind 127.0.0.1:{front_port}")
    text = text.replace("    server gw1 gw1:8000 check\n", f"    server gw1 127.0.0.1:{gateway_port} check\n")
    for i in (2, 3):
        text = text.replace(f"    server gw{i} gw{i}:8000 check\n", "")
    return text.replace("maxconn 4000", "maxconn 8000")


@contextlib.contextmanager
def haproxy(gateway_port: int) -> Iterator[tuple[int, int]]:
    """-> (HAProxy's port, its pid)."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-haproxy-") as tmp:
        config = Path(tmp) / "haproxy.cfg"
        config.write_text(haproxy_config(port, gateway_port))
        proc = subprocess.Popen([binary, "-db", "-f", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            _wait(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200,
                  "haproxy")  # fmt: skip
            yield port, proc.pid
        finally:
            proc.terminate()
            proc.wait(30)


@contextlib.contextmanager
def workers(echo_port: int, count: int, redis_url: str) -> Iterator[tuple[int, list[int]]]:
    """`voxgate serve --workers count` on Redis -> (its port, the worker pids)."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-workers-") as tmp:
        env = gateway_env(echo_port, Path(tmp) / "bench.db", VOXGATE_REDIS_URL=redis_url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "voxgate", "serve", "--port", str(port), "--workers", str(count)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            health = f"http://127.0.0.1:{port}/health"
            _wait(lambda: len(httpx.get(health, timeout=2).json()["nodes"]) == count, "the workers")
            pids = [proc.pid] if count == 1 else [c.pid for c in psutil.Process(proc.pid).children()]
            yield port, pids
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def cluster_benchmark(
    sessions: int, duration: float, warmup: float, drain: float, worker_counts: list[int],
    sequential: int, burst: int,
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"relay": [], "connect": {}}
    with redis_server() as redis_url, echo_upstream() as echo:
        for count in worker_counts:
            with workers(echo.port, count, redis_url) as (port, pids), haproxy(port) as (front, hp):
                args = [
                    "--scenario", "relay", "--protocol", "voxgate",
                    "--url", f"ws://127.0.0.1:{front}/ws", "--sessions", str(sessions),
                    "--duration", str(duration), "--warmup", str(warmup), "--drain", str(drain),
                    "--watch", f"echo={echo.pid}", "--watch", f"haproxy={hp}",
                ]  # fmt: skip
                for i, pid in enumerate(pids):
                    args += ["--watch", f"worker{i}={pid}"]
                run = run_loadgen(args, 120 + sessions * 0.5 + duration + warmup + drain)
            per_frame = run.get("cpu_us_per_frame", {})
            cores = run.get("cpu_cores", {})
            names = [f"worker{i}" for i in range(len(pids))]
            out["relay"].append({
                "workers": count, "sessions": sessions,
                "rtt_ms": run["rtt_ms"], "lost_frames": run["lost_frames"],
                "late_sends": run["late_sends"], "connect_failures": run["connect_failures"],
                "errors": run["errors"],
                "gateway_us_per_frame": round(sum(per_frame.get(n) or 0.0 for n in names), 1),
                "gateway_cores": round(sum(cores.get(n) or 0.0 for n in names), 3),
                "haproxy_us_per_frame": per_frame.get("haproxy"),
                "machine_cores": cores.get("machine"), "run": run,
            })  # fmt: skip
        base = ["--scenario", "connect", "--sequential", str(sequential), "--burst", str(burst),
                "--protocol", "voxgate"]  # fmt: skip
        for name, extra in (("memory", {}), ("redis", {"VOXGATE_REDIS_URL": redis_url})):
            with gateway(echo.port, **extra) as gw:
                out["connect"][name] = run_loadgen(
                    [*base, "--url", f"ws://127.0.0.1:{gw.port}/ws"], timeout=120 + burst
                )
    return out


__all__ = ["cluster_benchmark", "haproxy_config"]
