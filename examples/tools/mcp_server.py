"""A small MCP server whose tools voxgate's models can call: built with the official `mcp`
SDK's MCPServer (FastMCP before mcp 2).

    VOXGATE_MCP_SERVERS="python examples/tools/mcp_server.py"              # stdio
    python examples/tools/mcp_server.py --http --port 9400                 # streamable HTTP
    VOXGATE_MCP_SERVERS=http://127.0.0.1:9400/mcp
"""

from __future__ import annotations

import argparse
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("voxgate-example")

_WORDS = {
    "gateway": "a point where one network meets another",
    "cascade": "a series of stages, each feeding the next",
}


@server.tool()
def define(word: str) -> str:
    """The meaning of an English word."""
    meaning = _WORDS.get(word.strip().lower())
    if meaning is None:
        raise ToolError(f"no definition of {word!r}")
    return f"{word}: {meaning}"


@server.tool()
def add_numbers(a: float, b: float) -> float:
    """The sum of two numbers."""
    return a + b


@server.tool()
def crash() -> str:
    """Ends the server process in the middle of the call (to show what a client sees)."""
    os._exit(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP, not stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    args = parser.parse_args()
    if args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
