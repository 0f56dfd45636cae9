"""A real, throwaway Redis server for the shared-state tests.

Debian's `redis-server` in a fresh temporary directory, on a free 127.0.0.1 port, with no
persistence, so nothing touches a Redis the machine may run and parallel xdist workers each
get their own. `stop()` and `start()` (on the same port) let a test take Redis away and bring
it back. Tests are skipped, with the reason, only when no `redis-server` can be started.

`redis_server` is session-scoped (one per xdist worker) and `redis_url` empties it for each
test; `redis_factory` gives a test a private server of its own to stop and start.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="voxgate-redis-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        last = ""
        for _ in range(3):  # a free port can be taken between probing and binding
            self.proc = subprocess.Popen(
                [
                    self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.root),
                    "--daemonize", "no", "--logfile", str(self.root / "redis.log"),
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _answers(self.port):
                    return
                time.sleep(0.05)
            last = (self.root / "redis.log").read_text(errors="replace")[-1000:]
            self.stop()
            self.port = _free_port()
        raise RuntimeError(f"redis-server did not start: {last}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill()  # as a crash would: no goodbye to the clients
        proc.wait(timeout=30)

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as s:
            s.sendall(b"FLUSHALL\r\n")
            if not s.recv(16).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL failed")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _started() -> RedisServer:
    try:
        server = RedisServer()
        server.start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"cannot start a Redis server for the shared-state tests: {exc}")
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis per test session (per xdist worker); stopped at teardown."""
    server = _started()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis_factory() -> Iterator[Callable[[], RedisServer]]:
    """Private Redis servers for one test (to stop and start); all removed afterwards."""
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        server = _started()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.remove()
