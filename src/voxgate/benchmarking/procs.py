"""Starting and stopping the benchmark's processes, and measuring them with psutil.

Each server prints one line `PORT <n>` on stdout once it listens (it binds port 0), so nothing
in the suite depends on a fixed port and several runs can share a machine.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import psutil


def raise_fd_limit(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed: 400 sessions need ~1200 sockets in a relay."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def announce_port(port: int) -> None:
    """The one line a server process prints when it is ready."""
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()


@dataclass
class ServerProcess:
    """A benchmark server running in its own process."""

    name: str
    popen: subprocess.Popen[str]
    port: int
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss


@contextlib.contextmanager
def server_process(
    name: str,
    module: str,
    args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 60.0,
    argv: list[str] | None = None,
) -> Iterator[ServerProcess]:
    """Run `python -m <module> <args>` (or `argv`, a whole command line) until it prints
    `PORT <n>`; stop it on exit."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    popen = subprocess.Popen(
        argv or [sys.executable, "-m", module, *(args or [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
    tail: list[str] = []

    def drain_stderr() -> None:
        assert popen.stderr is not None
        for line in popen.stderr:
            tail.append(line.rstrip())
            del tail[:-40]

    threading.Thread(target=drain_stderr, daemon=True).start()
    try:
        port = _read_port(popen, startup_timeout, name, tail)
        proc = ServerProcess(name, popen, port, tail)
        threading.Thread(target=_drain_stdout, args=(popen,), daemon=True).start()
        yield proc
    finally:
        stop_process(popen)


def _drain_stdout(popen: subprocess.Popen[str]) -> None:
    assert popen.stdout is not None
    for _ in popen.stdout:
        pass


def _read_port(
    popen: subprocess.Popen[str], timeout: float, name: str, tail: list[str]
) -> int:
    assert popen.stdout is not None
    result: list[int] = []

    def reader() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            if line.startswith("PORT "):
                result.append(int(line.split()[1]))
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        stop_process(popen)
        detail = "\n".join(tail[-15:])
        raise RuntimeError(f"{name} did not start within {timeout:.0f} s:\n{detail}")
    return result[0]


def stop_process(popen: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """SIGINT first (servers shut down gracefully), then SIGKILL."""
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(signal.SIGINT)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait(5)


@dataclass
class CpuSnapshot:
    t: float
    cpu_s: dict[str, float]
    machine_busy_s: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (threads included)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), for the contention column."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def snapshot(pids: Mapping[str, int]) -> CpuSnapshot:
    cpu: dict[str, float] = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            cpu[name] = cpu_seconds(pid)
    return CpuSnapshot(time.perf_counter(), cpu, machine_busy_seconds())


def cores_between(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """Average cores used per process between two snapshots (CPU seconds / wall seconds)."""
    wall = max(b.t - a.t, 1e-9)
    out = {name: round((b.cpu_s[name] - a.cpu_s[name]) / wall, 3) for name in a.cpu_s if name in b.cpu_s}
    out["machine"] = round((b.machine_busy_s - a.machine_busy_s) / wall, 3)
    return out
