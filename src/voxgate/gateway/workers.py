"""`voxgate serve --workers N`: N gateway processes on one port, under one supervisor.

Each worker binds the port itself with SO_REUSEPORT, so the kernel spreads new connections
over the workers (no shared accept queue, no thundering herd) and a worker that dies takes only
its own connections with it. The supervisor starts the workers, restarts one that dies, and
passes SIGTERM/SIGINT on, so each worker drains as a single `voxgate serve` does.

Several workers are several gateways unless they share their state: refused without
`VOXGATE_REDIS_URL` (`workers_refusal` says why).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from typing import Any

from voxgate.config import Settings

log = logging.getLogger("voxgate.workers")

#: A worker that dies sooner than this after starting is not restarted (it would only loop):
#: the supervisor stops everything and says so.
MIN_UPTIME_S = 10.0


def workers_refusal(settings: Settings, workers: int) -> str | None:
    """Why `workers` processes cannot serve with these settings, or None."""
    if workers < 1:
        return f"--workers must be at least 1, not {workers}"
    if workers > 1 and not settings.redis_url:
        return (
            f"--workers {workers} needs a shared state backend: without one each process keeps "
            "its own session tokens, session caps and rate limits, so a token minted by one "
            "worker is refused by another and every per-user cap is multiplied by the number "
            "of workers. Set VOXGATE_REDIS_URL=redis://host:6379/0 (docs/deployment.md), or "
            "run one worker"
        )
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        return f"--workers {workers} needs SO_REUSEPORT, which this platform lacks"
    return None


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port) that other workers may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(settings_data: dict[str, Any], index: int) -> None:
    """One worker process: its own app, state and shared-state client, on the shared port."""
    from voxgate.gateway.app import create_app
    from voxgate.gateway.server import VoxgateServer, uvicorn_config
    from voxgate.logs import configure_logging
    from voxgate.secrets import register_secret

    settings = Settings(_env_file=None, **settings_data)  # type: ignore[call-arg]
    if settings.node_name:
        settings = settings.model_copy(update={"node_name": f"{settings.node_name}-{index}"})
    configure_logging(settings.log_level, settings.log_format)
    for secret in (
        settings.openai_api_key, settings.elevenlabs_api_key, settings.jwt_secret,
        settings.llm_api_key,
    ):  # fmt: skip
        if secret is not None:
            register_secret(secret.get_secret_value())
    sock = reuseport_socket(settings.host, settings.port)
    server = VoxgateServer(uvicorn_config(create_app(settings), settings))
    server.run(sockets=[sock])


def _settings_data(settings: Settings) -> dict[str, Any]:
    """The settings as constructor arguments a worker can rebuild them from."""
    data: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        data[name] = value
    return data


def serve_workers(settings: Settings, workers: int) -> int:
    """Run `workers` gateway processes on the configured port until SIGTERM/SIGINT;
    -> the exit status (1 when a worker could not stay up)."""
    # Fail here, once, with a clear error, if the port is taken (bind only: a socket that
    # listened would be handed connections nobody accepts).
    probe = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        probe.bind((settings.host, settings.port))
    finally:
        probe.close()
    context = multiprocessing.get_context("spawn")
    data = _settings_data(settings)
    stopping = failed = False

    def start(index: int) -> tuple[BaseProcess, float]:
        proc = context.Process(target=_worker, args=(data, index), name=f"voxgate-worker-{index}")
        proc.start()
        log.info("worker %d started (pid %s)", index, proc.pid)
        return proc, time.monotonic()

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc, _ in procs:
            if proc.is_alive() and proc.pid is not None:
                with_signal(proc.pid, signum)

    procs = [start(i) for i in range(workers)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("%d workers serving on http://%s:%d", workers, settings.host, settings.port)
    while True:
        alive = False
        for index, (proc, started) in enumerate(procs):
            if proc.is_alive():
                alive = True
                continue
            if stopping:
                continue
            if time.monotonic() - started < MIN_UPTIME_S:
                failed = True
                log.error(
                    "worker %d exited (code %s) %.1f s after starting; stopping every worker",
                    index, proc.exitcode, time.monotonic() - started,
                )  # fmt: skip
                stop(signal.SIGTERM, None)
                continue
            log.warning("worker %d exited (code %s); starting a new one", index, proc.exitcode)
            procs[index] = start(index)
            alive = True
        if not alive:
            break
        time.sleep(0.2)
    log.info("all workers stopped")
    return 1 if failed else 0


def with_signal(pid: int, signum: int) -> None:
    import os

    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


__all__ = ["reuseport_socket", "serve_workers", "workers_refusal"]
