"""A real cluster for tests: several `voxgate serve` processes, HAProxy in front, one Redis and
one PostgreSQL database.

HAProxy runs `deploy/haproxy.cfg` with only its addresses changed, so the shipped file is the
one under test. Each node is its own process with its own port and node name (`gw1`, `gw2`,
...); a test may SIGKILL or SIGTERM one and start it again.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.procs import VOXGATE, clean_env, free_port

ROOT = Path(__file__).resolve().parents[2]
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_config(front_port: int, node_ports: list[int]) -> str:
    """deploy/haproxy.cfg with its addresses changed and nothing else."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    replacements = {"bind :80": f"bind 127.0.0.1:{front_port}"}
    for i in range(1, 4):  # the shipped file names three nodes; fewer drops the others
        old = f"    server gw{i} gw{i}:8000 check\n"
        port = node_ports[i - 1] if i <= len(node_ports) else None
        replacements[old] = f"    server gw{i} 127.0.0.1:{port} check\n" if port else ""
    for old, new in replacements.items():
        assert old in text, f"deploy/haproxy.cfg no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@dataclass
class Cluster:
    workdir: Path
    env: dict[str, str]
    front_port: int
    node_ports: list[int]
    nodes: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    haproxy: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.front_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.front_port}/ws"

    def node_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.node_ports[index]}"

    def name(self, index: int) -> str:
        return f"gw{index + 1}"

    def index_of(self, name: str) -> int:
        return int(name.removeprefix("gw")) - 1

    def start_node(self, index: int) -> None:
        env = {**self.env, "VOXGATE_NODE_NAME": self.name(index)}
        log = open(self.workdir / f"{self.name(index)}.log", "ab")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen(
            [VOXGATE, "serve", "--port", str(self.node_ports[index])],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.nodes[index] = proc
        _wait_ok(self.node_url(index) + "/health", proc, self.workdir / f"{self.name(index)}.log")

    def kill_node(self, index: int) -> None:
        """SIGKILL: no goodbye to the clients, nothing given back to Redis."""
        proc = self.nodes[index]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.nodes[index] = None

    def stop(self) -> None:
        for proc in [p for p in self.nodes if p is not None]:
            proc.send_signal(signal.SIGTERM)
        for i, proc in enumerate(self.nodes):
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            self.nodes[i] = None
        if self.haproxy is not None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()

    def wait_routable(self, count: int, timeout: float = 60.0) -> None:
        """Until HAProxy sees `count` nodes up (its health checks) and the registry lists them."""
        deadline = time.monotonic() + timeout
        while True:
            if self.haproxy is not None and self.haproxy.poll() is not None:
                log = (self.workdir / "haproxy.log").read_text(errors="replace")
                raise RuntimeError(f"haproxy exited: {log[-2000:]}")
            try:
                health = httpx.get(self.url + "/health", timeout=5)
                if health.status_code == 200 and len(health.json()["nodes"]) == count:
                    stats = self._servers_up()
                    if stats >= count:
                        return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not have {count} routable nodes in {timeout} s")
            time.sleep(0.2)

    def _servers_up(self) -> int:
        """Nodes whose health check HAProxy passes (asked through each node's own port, which
        is what HAProxy checks)."""
        up = 0
        for i, proc in enumerate(self.nodes):
            if proc is None:
                continue
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.node_url(i) + "/health", timeout=5).status_code == 200:
                    up += 1
        return up


def _wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the node exited: {log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy within {timeout} s")


@contextlib.contextmanager
def running_cluster(
    workdir: Path, nodes: int, **settings: str
) -> Iterator[Cluster]:
    """`nodes` voxgate processes (settings as VOXGATE_* environment) behind HAProxy."""
    if not Path(HAPROXY).exists():
        pytest.fail("haproxy is not installed: run scripts/setup.sh (it installs Debian's haproxy)")
    node_ports = [free_port() for _ in range(nodes)]
    cluster = Cluster(workdir, clean_env(**settings), free_port(), node_ports, [None] * nodes)
    try:
        # Nodes one after another: the first migrates the database, the rest find it done.
        for i in range(nodes):
            cluster.start_node(i)
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(cluster.front_port, node_ports))
        cluster.haproxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)],
            stdout=open(workdir / "haproxy.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        cluster.wait_routable(nodes)
        yield cluster
    finally:
        cluster.stop()
