"""Real `voxgate` processes for tests: the CLI flows a user runs, started and always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

VOXGATE = str(Path(sys.executable).parent / "voxgate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any voxgate/provider settings, plus `settings`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VOXGATE_", "OPENAI_", "ELEVENLABS_"))
    }
    env.update(settings)
    return env


def wait_http(url: str, timeout: float = 120.0) -> None:
    """Until `url` answers. Generous: `voxgate serve` loads the offline engine's models before
    it listens, which takes seconds on a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def voxgate_processes(
    *commands: list[str], env: dict[str, str], logs: Path | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`voxgate <command...>` for each command; SIGTERM on exit, SIGKILL if that is ignored.
    With `logs`, command i's output goes to `logs/i.log` (for tests that read what it said)."""
    with contextlib.ExitStack() as files:
        outputs = [
            files.enter_context(open(logs / f"{i}.log", "wb")) if logs else subprocess.DEVNULL
            for i in range(len(commands))
        ]
        procs = [
            subprocess.Popen([VOXGATE, *command], env=env, stdout=out, stderr=subprocess.STDOUT)
            for command, out in zip(commands, outputs, strict=True)
        ]
        try:
            yield procs
        finally:
            _stop(procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def talk(url: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VOXGATE, "talk", "--url", url, *args], env=env, capture_output=True, text=True, timeout=90
    )
