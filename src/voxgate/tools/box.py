"""The operator's server tools, loaded once per gateway, and one way to run a call of any of
them: parse, check, run under a timeout, and turn whatever happened into text for the model.

Nothing a tool does can break the conversation: bad arguments, an unknown name, an exception,
a hang past the timeout all become an error result the model reads (and may explain to the
user); only the call fails.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voxgate.engines.base import ToolSpec
from voxgate.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    error_text,
    output_text,
    parse_arguments,
)

if TYPE_CHECKING:
    from voxgate.config import Settings

log = logging.getLogger("voxgate.tools")


@dataclass(slots=True)
class ToolOutcome:
    """How one call ended: `output` is what the model reads either way."""

    output: str
    error: str | None = None
    status: str = "done"  # "done" | "error" | "cancelled"

    @classmethod
    def failed(cls, message: str, status: str = "error") -> ToolOutcome:
        return cls(error_text(message), message, status)


class ToolBox:
    """The server tools of one gateway, by name."""

    def __init__(self, tools: list[Tool] | None = None) -> None:
        self.tools: dict[str, Tool] = {}
        self._mcp: list[Any] = []
        for tool in tools or []:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.name in self.tools:
            raise ValueError(
                f"two tools are named {tool.name!r} ({self.tools[tool.name].source} and "
                f"{tool.source}); tool names must be unique"
            )
        self.tools[tool.name] = tool

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolBox:
        """Python tools (`VOXGATE_TOOLS`) and HTTP tools (`VOXGATE_TOOLS_FILE`); raises
        `ValueError` with a sentence when either cannot be loaded."""
        from voxgate.tools.http import load_file
        from voxgate.tools.python import load_modules

        box = cls(load_modules(list(settings.tools)))
        if settings.tools_file:
            for tool in load_file(settings.tools_file):
                box.add(tool)
        return box

    @property
    def specs(self) -> list[ToolSpec]:
        return [tool.spec for tool in self.tools.values()]

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    async def open(self, settings: Settings) -> None:
        """Connect the MCP servers (`VOXGATE_MCP_SERVERS`) and add their tools."""
        if not settings.mcp_servers:
            return
        from voxgate.tools.mcp import connect_servers

        self._mcp, tools = await connect_servers(list(settings.mcp_servers), settings.start_timeout_s)
        for tool in tools:
            self.add(tool)

    async def close(self) -> None:
        for server in self._mcp:
            await server.close()
        for tool in self.tools.values():
            try:
                await tool.close()
            except Exception:  # noqa: BLE001 - closing one must not stop closing the rest
                log.warning("closing tool %s failed", tool.name, exc_info=True)

    async def run(
        self, name: str, raw_arguments: str, context: ToolContext, timeout_s: float
    ) -> ToolOutcome:
        """Run one call of a server tool; never raises (except on cancellation)."""
        tool = self.tools.get(name)
        if tool is None:
            return ToolOutcome.failed(f"there is no tool named {name[:64]!r}")
        try:
            arguments = tool.check(parse_arguments(raw_arguments))
        except ToolError as exc:
            return ToolOutcome.failed(str(exc))
        timeout = tool.timeout_s if tool.timeout_s is not None else timeout_s
        try:
            async with asyncio.timeout(timeout):
                value = await tool.invoke(arguments, context)
        except TimeoutError:
            return ToolOutcome.failed(f"the tool {name} did not answer within {timeout:g} s")
        except ToolError as exc:
            return ToolOutcome.failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - a tool's bug is the call's failure, no more
            log.warning("tool %s raised", name, exc_info=True)
            return ToolOutcome.failed(f"the tool {name} failed: {type(exc).__name__}: {exc}"[:500])
        return ToolOutcome(output_text(value))


def describe(box: ToolBox) -> list[str]:
    """Lines `voxgate serve` logs about the tools it offers models."""
    return [f"tool {tool.name} ({tool.source})" for tool in box.tools.values()]


def parsed_or_raw(raw: str) -> Any:
    """The arguments as an object for clients and storage; the raw text when they are not JSON."""
    try:
        return parse_arguments(raw)
    except ToolError:
        return raw


__all__ = ["ToolBox", "ToolOutcome", "describe", "parsed_or_raw"]
