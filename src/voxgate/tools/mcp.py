"""MCP servers as tool sources (`VOXGATE_MCP_SERVERS`), through the official `mcp` SDK: a
stdio command the gateway starts, or a streamable-HTTP URL. Their tools are listed when the
gateway starts and called like any other server tool.

Each server's connection lives in a task of its own: the SDK's task group then never reaches
the gateway's, and a server that dies takes down only its connection. The next call of one of
its tools connects again (a stdio server is started again); until then, and when it stays
down, calls give the model an error result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from typing import TYPE_CHECKING, Any

from voxgate.engines.base import ToolSpec
from voxgate.tools.base import Tool, ToolContext, ToolError, check_name

if TYPE_CHECKING:
    from mcp import Client

log = logging.getLogger("voxgate.tools.mcp")


class McpServer:
    """One configured MCP server: `target` is an `http(s)://` URL or a command line."""

    def __init__(self, target: str, connect_timeout_s: float = 15.0) -> None:
        self.target = target.strip()
        self.connect_timeout_s = connect_timeout_s
        self.client: Client | None = None
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def label(self) -> str:
        return self.target if len(self.target) <= 60 else self.target[:57] + "..."

    def _server(self) -> Any:
        if self.target.startswith(("http://", "https://")):
            return self.target
        from mcp.client.stdio import StdioServerParameters

        argv = shlex.split(self.target)
        if not argv:
            raise ValueError("VOXGATE_MCP_SERVERS: an empty entry")
        return StdioServerParameters(command=argv[0], args=argv[1:])

    async def connect(self) -> list[Any]:
        """Connect (in the connection's own task) and list the tools; raises `ToolError`."""
        from mcp import Client

        ready: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()

        async def own() -> None:
            try:
                async with Client(self._server()) as client:
                    listed = await client.list_tools()
                    self.client = client
                    if not ready.done():
                        ready.set_result(list(listed.tools))
                    await self._stop.wait()
            except BaseException as exc:  # noqa: BLE001 - the connection ends; the gateway goes on
                self.error = f"{type(exc).__name__}: {exc}"[:300]
                if not ready.done():
                    ready.set_exception(ToolError(f"the MCP server {self.label} is unavailable"))
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                self.client = None

        self._task = asyncio.create_task(own(), name=f"mcp {self.label}")
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await asyncio.shield(ready)
        except TimeoutError:
            await self.close()
            raise ToolError(f"the MCP server {self.label} did not answer in time") from None

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        async with self._lock:
            if self.client is None:
                await self.close()
                await self.connect()  # a server that died is started (or reached) again
            client = self.client
        assert client is not None
        from mcp.shared.exceptions import MCPError

        try:
            result = await client.call_tool(name, arguments)
        except MCPError as exc:
            if "closed" in str(exc).lower():
                # The connection is gone: the next call connects again.
                async with self._lock:
                    if self.client is client:
                        self.client = None
            raise ToolError(f"the MCP server {self.label} failed during the call: {exc}") from None
        texts = [getattr(part, "text", "") for part in result.content if getattr(part, "text", None)]
        if result.is_error:
            raise ToolError(" ".join(texts) or f"the MCP tool {name} failed")
        structured = result.structured_content
        if isinstance(structured, dict) and set(structured) == {"result"}:
            return structured["result"]
        if structured is not None:
            return structured
        return "\n".join(texts)

    async def close(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


class McpTool(Tool):
    source = "mcp"

    def __init__(self, server: McpServer, spec: ToolSpec) -> None:
        self.server = server
        self.spec = spec

    async def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        return await self.server.call(self.spec.name, arguments)


async def connect_servers(targets: list[str], connect_timeout_s: float) -> tuple[list[McpServer], list[Tool]]:
    """Connect every server and list its tools. A server that cannot be reached is logged and
    left out (the gateway serves without its tools); a tool name that is not allowed raises."""
    servers: list[McpServer] = []
    tools: list[Tool] = []
    for target in targets:
        server = McpServer(target, connect_timeout_s)
        try:
            listed = await server.connect()
        except (ToolError, ValueError, OSError) as exc:
            log.warning(
                "MCP server %s is unavailable (%s); its tools are not offered", server.label,
                server.error or exc,
            )  # fmt: skip
            await server.close()
            continue
        servers.append(server)
        for item in listed:
            schema = dict(getattr(item, "input_schema", None) or getattr(item, "inputSchema", {}) or {})
            schema.pop("title", None)
            schema.setdefault("type", "object")
            schema.setdefault("properties", {})
            spec = ToolSpec(check_name(item.name), item.description or "", schema)
            tools.append(McpTool(server, spec))
        log.info("MCP server %s: %d tools", server.label, len(listed))
    return servers, tools


__all__ = ["McpServer", "McpTool", "connect_servers"]
