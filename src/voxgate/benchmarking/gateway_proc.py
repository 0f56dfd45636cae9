"""voxgate under test: the real app on the real uvicorn server, in its own process.

The same steps as `voxgate serve` (settings from the environment, logging, `create_app`,
`VoxgateServer` with `uvicorn_config`), except that it binds port 0 and prints `PORT <n>` once
listening, and that it ignores any `.env` file so the benchmark's environment is the whole truth.

    VOXGATE_ENGINE=openai VOXGATE_OPENAI_URL=ws://127.0.0.1:<echo> OPENAI_API_KEY=sk-bench \\
        python -m voxgate.benchmarking.gateway_proc
"""

from __future__ import annotations

import socket

from voxgate.benchmarking._run import run_coroutine
from voxgate.benchmarking.procs import announce_port, raise_fd_limit
from voxgate.config import Settings
from voxgate.gateway.app import create_app
from voxgate.gateway.server import VoxgateServer, uvicorn_config
from voxgate.logs import configure_logging


class _AnnouncingServer(VoxgateServer):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.servers:
            announce_port(self.servers[0].sockets[0].getsockname()[1])


def main() -> None:
    raise_fd_limit()
    settings = Settings(_env_file=None, host="127.0.0.1", port=0)  # type: ignore[call-arg]
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    config = uvicorn_config(app, settings, port=0)
    config.backlog = 4096
    server = _AnnouncingServer(config)
    run_coroutine(server.serve())


if __name__ == "__main__":
    main()
