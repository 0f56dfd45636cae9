"""voxgate: a realtime voice-conversation gateway."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `@voxgate.tool` without importing pydantic for every `import voxgate`.
    if name in ("tool", "ToolContext", "ToolError"):
        import voxgate.tools as tools

        return getattr(tools, name)
    raise AttributeError(f"module 'voxgate' has no attribute {name!r}")
