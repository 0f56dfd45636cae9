"""Server tools that misbehave on purpose (`VOXGATE_TOOLS=tests.support.tools_faulty`): the
bad-input tests check that each failure reaches the model as an error result and the
conversation goes on."""

from __future__ import annotations

import asyncio

import voxgate


@voxgate.tool
def explode(reason: str = "boom") -> str:
    """Always raises."""
    raise RuntimeError(f"the tool exploded: {reason}")


@voxgate.tool(timeout_s=0.5)
async def hang() -> str:
    """Never answers (its own timeout is half a second)."""
    await asyncio.Event().wait()
    return "never"


@voxgate.tool
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@voxgate.tool
async def slow(seconds: float = 1.0) -> str:
    """Answers after `seconds`."""
    await asyncio.sleep(seconds)
    return f"slept {seconds:g} s"
