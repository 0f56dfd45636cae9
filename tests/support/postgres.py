"""A real, throwaway PostgreSQL server for the store tests.

Starts Debian's PostgreSQL binaries (`initdb` + `pg_ctl`) in a fresh temporary directory, on a
free 127.0.0.1 port, with its unix socket in that directory too, so nothing touches the machine's
own cluster and parallel xdist workers each get their own server. As root it runs the binaries as
the `postgres` user (PostgreSQL refuses to run as root). Tests are skipped, with the reason, only
when no server can be started at all.

The fixtures are registered for the whole suite by `tests/conftest.py`; `pg_server` is
session-scoped (one server per xdist worker), `pg_database_url` gives each test a new database.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60


@dataclass
class PgServer:
    port: int
    socket_dir: Path
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A new empty database; returns its name."""
        import asyncpg

        name = f"t_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=self.user, database="postgres", timeout=30
        )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=self.user, database="postgres", timeout=30
        )
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def find_pg_bindir() -> Path | None:
    candidates: list[str] = []
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(out)
        except (subprocess.SubprocessError, OSError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for cand in candidates:
        if cand and (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Runner:
    """Runs PostgreSQL binaries as a non-root user."""

    def __init__(self) -> None:
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            import pwd

            pw = pwd.getpwnam("postgres")  # KeyError when there is no such user
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            runuser = shutil.which("runuser")
            self.prefix = [runuser, "-u", "postgres", "--"] if runuser else None
            if self.prefix is None:
                raise RuntimeError("running as root but `runuser` is not available")
        else:
            self.prefix = []

    def chown(self, path: Path) -> None:
        if self.as_postgres:
            os.chown(path, self.uid, self.gid)

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*(self.prefix or []), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def _start_server() -> tuple[PgServer, Path, Path, _Runner]:
    bindir = find_pg_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin)"
        )
    runner = _Runner()
    # Not pytest's tmp_path: that lives under a root-only 0700 directory the postgres user
    # cannot enter.
    root = Path(tempfile.mkdtemp(prefix="voxgate-pg-"))
    os.chmod(root, 0o755)
    runner.chown(root)
    data = root / "data"
    init = runner.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        timeout=START_TIMEOUT_S,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    last_error = ""
    for _ in range(3):  # a free port can be taken between probing and binding; retry
        port = _free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} "
            # A scratch server: crash safety of the *server* is not under test here.
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
            "-c max_connections=100 -c shared_buffers=16MB"
        )
        start = runner.run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "server.log"),
                "-o",
                opts,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ],
            timeout=START_TIMEOUT_S + 10,
        )
        if start.returncode == 0:
            return PgServer(port=port, socket_dir=root), root, bindir, runner
        log_text = (
            (root / "server.log").read_text(errors="replace")
            if (root / "server.log").exists()
            else ""
        )
        last_error = (start.stderr.strip() or start.stdout.strip()) + "\n" + log_text[-2000:]
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"pg_ctl start failed: {last_error}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server per test session (per xdist worker); stopped at teardown."""
    try:
        server, root, bindir, runner = _start_server()
    except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot start a PostgreSQL server for the store tests: {exc}")
    try:
        yield server
    finally:
        runner.run(
            [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"],
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_database_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped afterwards."""
    name = asyncio.run(pg_server.create_database())
    try:
        yield pg_server.url(name)
    finally:
        asyncio.run(pg_server.drop_database(name))
