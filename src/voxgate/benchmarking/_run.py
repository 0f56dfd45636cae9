"""Run a benchmark process's main coroutine on the chosen event loop.

Every process in one benchmark run uses the same loop, chosen by `VOXGATE_BENCH_LOOP`:
`asyncio` (the default, so runs compare like-for-like with the figures recorded in
docs/benchmarks.md, which were measured on it) or `uvloop` (what `voxgate serve` runs; installed
with `uvicorn[standard]`). The baselines must never run on a faster loop than voxgate.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

LOOP_ENV = "VOXGATE_BENCH_LOOP"
LOOPS = ("asyncio", "uvloop")


def loop_name() -> str:
    name = os.environ.get(LOOP_ENV, "asyncio")
    if name not in LOOPS:
        raise ValueError(f"{LOOP_ENV} must be one of {LOOPS}, got {name!r}")
    return name


def run_coroutine(coro: Awaitable[Any]) -> Any:
    """`asyncio.run` on the configured loop."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def run(main: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """`main(stop)` runs until it returns; SIGINT/SIGTERM set `stop`."""

    async def wrapper() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return run_coroutine(wrapper())
