"""Python server tools: functions marked with `voxgate.tool`, loaded from the modules named by
`VOXGATE_TOOLS`.

The JSON Schema the model sees comes from the type hints (through pydantic), the description
from the docstring, and pydantic validates every call's arguments against the same hints, so
the schema and the check can never disagree. A parameter annotated `ToolContext` is not shown
to the model: it receives who the call is for.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from voxgate.engines.base import ToolSpec
from voxgate.tools.base import Tool, ToolContext, ToolError, check_name

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__voxgate_tool__"


class PythonTool(Tool):
    """One decorated function, sync (run in a worker thread) or async."""

    source = "python"

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.fn = fn
        self.timeout_s = timeout_s
        self._is_async = inspect.iscoroutinefunction(fn)
        hints = get_type_hints(fn)
        fields: dict[str, Any] = {}
        self._context_param: str | None = None
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {fn.__qualname__}: *args and **kwargs cannot be described")
            annotation = hints.get(param.name, Any)
            if annotation is ToolContext:
                self._context_param = param.name
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (annotation, default)
        self._model: type[BaseModel] = create_model(  # type: ignore[call-overload]
            f"{fn.__name__}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        schema = self._model.model_json_schema()
        schema.pop("title", None)
        schema.setdefault("properties", {})
        schema["type"] = "object"
        self.spec = ToolSpec(
            name=check_name(name or fn.__name__),
            description=(description or inspect.getdoc(fn) or "").strip(),
            parameters=schema,
        )

    def check(self, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            model = self._model.model_validate(arguments)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "arguments"
            raise ToolError(
                f"the arguments do not match the schema: {where}: {first.get('msg', 'invalid')}"
            ) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        kwargs = dict(arguments)
        if self._context_param is not None:
            kwargs[self._context_param] = context
        if self._is_async:
            return await self.fn(**kwargs)
        return await asyncio.to_thread(self.fn, **kwargs)


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> F | Callable[[F], F]:
    """Mark a function as a tool the model may call: `@voxgate.tool` or
    `@voxgate.tool(timeout_s=30)`. The function itself is returned unchanged (callable and
    testable as before); the gateway finds it in the modules `VOXGATE_TOOLS` names."""

    def mark(f: F) -> F:
        setattr(f, _MARK, PythonTool(f, name=name, description=description, timeout_s=timeout_s))
        return f

    if fn is not None:
        return mark(fn)
    return mark


def load_modules(names: list[str]) -> list[Tool]:
    """Every function marked with `voxgate.tool` in these modules, in definition order."""
    tools: list[Tool] = []
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        # Like uvicorn's app directory: a module next to where `voxgate serve` starts is found
        # (the console script, unlike `python -m`, does not put it on the path).
        sys.path.insert(0, os.getcwd())
    for module_name in names:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"VOXGATE_TOOLS: cannot import {module_name!r}: {exc}") from exc
        found = [
            getattr(value, _MARK)
            for value in vars(module).values()
            if callable(value) and isinstance(getattr(value, _MARK, None), PythonTool)
        ]
        if not found:
            raise ValueError(
                f"VOXGATE_TOOLS: module {module_name!r} has no function marked with @voxgate.tool"
            )
        tools.extend(found)
    return tools


__all__ = ["PythonTool", "load_modules", "tool"]
