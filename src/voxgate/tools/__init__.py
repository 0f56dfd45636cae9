"""Tools the model may call: server tools the gateway runs (Python functions marked with
`voxgate.tool`, HTTP endpoints from `VOXGATE_TOOLS_FILE`) and client tools a page offers in
`start.tools`. One model for every engine: the engine reports a call, the session runs it and
hands the engine the result."""

from voxgate.tools.base import Tool, ToolContext, ToolError
from voxgate.tools.box import ToolBox, ToolOutcome
from voxgate.tools.python import tool

__all__ = ["Tool", "ToolBox", "ToolContext", "ToolError", "ToolOutcome", "tool"]
