"""HTTP server tools, declared in a file (`VOXGATE_TOOLS_FILE`, YAML or JSON).

Each entry names the tool, describes it, gives its arguments' JSON Schema and says where it
lives: the arguments are POSTed as a JSON body (or sent as the query of a GET) and the response
body is the result. Header values may name environment variables (`${NAME}`), so secrets stay
in the environment and out of the file; headers are never sent to clients or models.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import orjson

from voxgate.engines.base import ToolSpec
from voxgate.tools.base import Tool, ToolContext, ToolError, check_name, check_parameters

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: Largest response body read from a tool endpoint.
MAX_BODY_BYTES = 1_000_000


def _expand(value: str, where: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"{where}: environment variable {name} is not set")
        return os.environ[name]

    return _ENV_REF.sub(sub, value)


class HttpTool(Tool):
    source = "http"

    def __init__(
        self,
        spec: ToolSpec,
        url: str,
        method: str = "POST",
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.spec = spec
        self.url = url
        self.method = method
        self.headers = headers or {}
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        headers = {
            **self.headers,
            "X-Voxgate-User": context.user_id,
            "X-Voxgate-Conversation": context.conversation_id or "",
            "X-Voxgate-Call": context.call_id,
        }
        try:
            if self.method == "GET":
                params = {k: v if isinstance(v, str) else orjson.dumps(v).decode()
                          for k, v in arguments.items()}  # fmt: skip
                response = await self._client.request("GET", self.url, params=params, headers=headers)
            else:
                response = await self._client.request(
                    self.method, self.url, content=orjson.dumps(arguments),
                    headers={**headers, "Content-Type": "application/json"},
                )  # fmt: skip
        except httpx.HTTPError as exc:
            raise ToolError(f"the tool's server could not be reached ({type(exc).__name__})") from None
        body = response.content[:MAX_BODY_BYTES]
        if response.status_code >= 400:
            snippet = body[:200].decode("utf-8", "replace")
            raise ToolError(f"the tool's server answered HTTP {response.status_code}: {snippet}")
        content_type = response.headers.get("content-type", "")
        if "json" in content_type:
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                raise ToolError("the tool's server answered with invalid JSON") from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError("the tool's server answered with a body that is not text") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def load_file(path: str | Path) -> list[Tool]:
    """The tools a YAML or JSON file declares; raises `ValueError` naming the entry at fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"VOXGATE_TOOLS_FILE: cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".json":
            data = orjson.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - either parser's error becomes one sentence
        raise ValueError(f"VOXGATE_TOOLS_FILE: {path} is not valid YAML/JSON: {exc}") from None
    entries = data.get("tools") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"VOXGATE_TOOLS_FILE: {path} must hold a list 'tools' of tool entries")
    tools: list[Tool] = []
    for i, entry in enumerate(entries):
        where = f"VOXGATE_TOOLS_FILE {path.name}, tool {i + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: an entry must be a mapping")
        try:
            name = check_name(str(entry["name"]))
            url = str(entry["url"])
        except KeyError as exc:
            raise ValueError(f"{where}: '{exc.args[0]}' is required") from None
        where = f"VOXGATE_TOOLS_FILE {path.name}, tool {name!r}"
        url = _expand(url, where)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{where}: url must start with http:// or https://")
        method = str(entry.get("method", "POST")).upper()
        if method not in _METHODS:
            raise ValueError(f"{where}: method must be one of {', '.join(_METHODS)}")
        headers = entry.get("headers") or {}
        if not isinstance(headers, dict):
            raise ValueError(f"{where}: headers must be a mapping")
        timeout = entry.get("timeout_s")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise ValueError(f"{where}: timeout_s must be a positive number")
        spec = ToolSpec(
            name=name,
            description=str(entry.get("description", "")),
            parameters=check_parameters(
                entry.get("parameters", {"type": "object", "properties": {}}), where
            ),
        )
        tools.append(HttpTool(
            spec, url, method,
            {str(k): _expand(str(v), where) for k, v in headers.items()},
            float(timeout) if timeout is not None else None,
        ))  # fmt: skip
    return tools


__all__ = ["HttpTool", "load_file"]
