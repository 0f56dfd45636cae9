"""The tool calls of one `/ws` session: which tools the model may call, running each call the
engine reports (a server tool in the gateway, a client tool through `tool_call` and
`tool_result`), telling the client how it goes (`tool_status`), storing it in the conversation
and giving the engine the result.

Every call ends with exactly one result for the model, whatever happens: the tool's output, an
error sentence (bad arguments, unknown tool, exception, timeout, a client that never answers),
or a cancellation (interrupt, stop) after which the model waits for the user and a late answer
is discarded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from voxgate import protocol as P
from voxgate.engines.base import ConversationEngine, ToolCall, ToolExchange, ToolSpec
from voxgate.tools.base import ToolContext, ToolError, check_parameters, check_schema, output_text
from voxgate.tools.box import ToolBox, ToolOutcome, parsed_or_raw

if TYPE_CHECKING:
    from voxgate.gateway.metrics import Metrics
    from voxgate.gateway.turnlog import TurnLog

log = logging.getLogger("voxgate.tools")

#: What the assistant says while a slow tool runs (`VOXGATE_TOOL_FILLER_MS`).
FILLER = "One moment, please."

_CALL_ID = re.compile(r'"callId"\s*:\s*"([^"\\]{1,128})"')
#: Calls answered or cancelled recently, remembered so a second answer is told apart from a
#: made-up id.
_FINISHED_KEPT = 256


@dataclass(slots=True)
class _Pending:
    call: ToolCall
    started: float
    task: asyncio.Task[None] | None = None
    #: A client tool's answer (set by `tool_result`).
    answer: asyncio.Future[ToolOutcome] | None = None
    client: bool = False


@dataclass(slots=True)
class SessionToolset:
    """The tools of one session: the operator's server tools and the client's."""

    server: ToolBox
    client: dict[str, P.ClientTool] = field(default_factory=dict)

    @classmethod
    def for_start(cls, server: ToolBox, offered: list[P.ClientTool] | None) -> SessionToolset:
        """The client's `start.tools` over the server's; raises `ProtocolError` (non-fatal
        `bad_request`, the client may send a corrected `start`) for a name that collides with
        a server tool or a schema that is not one."""
        client: dict[str, P.ClientTool] = {}
        for tool in offered or []:
            if tool.name in server:
                raise P.invalid(
                    f"start: tools: '{tool.name}' is already a server tool of this gateway; "
                    "give the client tool another name"
                )
            try:
                tool.parameters = check_parameters(tool.parameters, f"start: tools: '{tool.name}'")
            except ValueError as exc:
                raise P.invalid(str(exc)) from None
            client[tool.name] = tool
        return cls(server, client)

    @property
    def names(self) -> list[str]:
        return [*self.server.tools, *self.client]

    @property
    def specs(self) -> list[ToolSpec]:
        return [
            *self.server.specs,
            *(ToolSpec(t.name, t.description, t.parameters) for t in self.client.values()),
        ]


class ToolCalls:
    """Runs the calls of one session; see the module docstring."""

    def __init__(
        self,
        toolset: SessionToolset,
        engine: ConversationEngine,
        turns: TurnLog,
        metrics: Metrics,
        say: Callable[[Mapping[str, Any]], None],
        context: Callable[[ToolCall], ToolContext],
        timeout_s: float,
        filler_ms: int = 0,
    ) -> None:
        self.toolset = toolset
        self.engine = engine
        self.turns = turns
        self.metrics = metrics
        self.say = say
        self.context = context
        self.timeout_s = timeout_s
        self.filler_ms = filler_ms
        self._filler: asyncio.Task[None] | None = None
        self.pending: dict[str, _Pending] = {}
        self._finished: dict[str, str] = {}  # call id -> how it ended
        self._group: asyncio.TaskGroup | None = None

    def bind(self, group: asyncio.TaskGroup) -> None:
        """Calls run as tasks of the session's group: they end with the session."""
        self._group = group

    # --- from the engine -----------------------------------------------------------------------

    def start(self, call: ToolCall) -> None:
        """A `ToolCall` from the engine: announce it and run it in the background."""
        if call.call_id in self.pending or call.call_id in self._finished:
            log.warning("ignoring a repeated tool call %s", call.call_id)
            return
        pending = _Pending(call, time.monotonic())
        self.pending[call.call_id] = pending
        self.say(P.tool_status_message(call.call_id, call.name, "running", 0))
        pending.task = self._spawn(self._run(pending), f"tool-{call.name}")
        if self.filler_ms > 0 and (self._filler is None or self._filler.done()):
            self._filler = self._spawn(self._fill(), "tool-filler")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        if self._group is not None:
            return self._group.create_task(coro, name=name)
        return asyncio.create_task(coro, name=name)

    async def _fill(self) -> None:
        """Calls still running after `filler_ms`: the assistant says a short filler (once for
        the calls running together), where the engine can."""
        await asyncio.sleep(self.filler_ms / 1000)
        if not self.pending:
            return
        try:
            await self.engine.say_filler(FILLER)
        except Exception:  # noqa: BLE001 - a filler that fails leaves only silence
            log.warning("the engine could not say a filler", exc_info=True)

    async def _run(self, pending: _Pending) -> None:
        call = pending.call
        try:
            outcome = await self._outcome(pending)
        except asyncio.CancelledError:
            # `cancel_all` reports and answers the call; nothing more to do here.
            raise
        if self.pending.pop(call.call_id, None) is None:
            return  # cancelled meanwhile: the engine already has the cancellation
        await self._finish(pending, outcome, respond=True)

    async def _outcome(self, pending: _Pending) -> ToolOutcome:
        call = pending.call
        if call.name in self.toolset.client:
            return await self._client_call(pending)
        if call.name not in self.toolset.server:
            return ToolOutcome.failed(f"there is no tool named {call.name[:64]!r}")
        return await self.toolset.server.run(
            call.name, call.arguments, self.context(call), self.timeout_s
        )

    async def _client_call(self, pending: _Pending) -> ToolOutcome:
        call = pending.call
        declared = self.toolset.client[call.name]
        arguments = parsed_or_raw(call.arguments)
        if not isinstance(arguments, dict):
            return ToolOutcome.failed(
                "the arguments are not valid JSON" if isinstance(arguments, str)
                else "the arguments must be a JSON object"
            )  # fmt: skip
        try:
            check_schema(declared.parameters, arguments)
        except ToolError as exc:
            return ToolOutcome.failed(str(exc))
        pending.client = True
        pending.answer = asyncio.get_running_loop().create_future()
        self.say(P.tool_call_message(call.call_id, call.name, arguments))
        try:
            async with asyncio.timeout(self.timeout_s):
                return await pending.answer
        except TimeoutError:
            return ToolOutcome.failed(
                f"the client did not answer the tool call within {self.timeout_s:g} s"
            )

    async def _finish(self, pending: _Pending, outcome: ToolOutcome, *, respond: bool) -> None:
        call = pending.call
        elapsed = time.monotonic() - pending.started
        self._finished[call.call_id] = outcome.status
        while len(self._finished) > _FINISHED_KEPT:
            del self._finished[next(iter(self._finished))]
        # Server tools by name; client tools share one label (their names are the client's
        # choice, and a metric label must not be).
        label = (
            call.name if call.name in self.toolset.server
            else "client" if call.name in self.toolset.client else "unknown"
        )  # fmt: skip
        self.metrics.tool_calls_total.labels(label, outcome.status).inc()
        self.metrics.tool_seconds.labels(label).observe(elapsed)
        self.say(P.tool_status_message(
            call.call_id, call.name, outcome.status, int(elapsed * 1000), outcome.error  # type: ignore[arg-type]
        ))  # fmt: skip
        exchange = ToolExchange(call.call_id, call.name, call.arguments, outcome.output)
        self.turns.store_tool(exchange, outcome.status, outcome.error)
        try:
            await self.engine.send_tool_result(
                call.call_id, outcome.output, respond=respond, is_error=outcome.error is not None
            )
        except Exception:  # noqa: BLE001 - the engine reports its own failures as events
            log.warning("the engine could not take the result of %s", call.call_id, exc_info=True)

    # --- from the client -----------------------------------------------------------------------

    def client_result(self, msg: P.ToolResultMessage) -> None:
        """A `tool_result`: resolves the call it answers; raises `ProtocolError` (non-fatal)
        for an id that names no call waiting for the client."""
        pending = self.pending.get(msg.call_id)
        if pending is None or pending.answer is None or pending.answer.done():
            ended = self._finished.get(msg.call_id)
            if ended is not None or (pending is not None and pending.answer is not None):
                how = {"cancelled": "was cancelled", "error": "failed"}.get(ended or "", "is answered")
                raise P.invalid(
                    f"tool_result: call '{msg.call_id[:64]}' {how} already; this result was discarded"
                )
            raise P.invalid(
                f"tool_result: no tool call '{msg.call_id[:64]}' is waiting for a result"
            )
        if msg.error is not None:
            pending.answer.set_result(ToolOutcome.failed(msg.error))
        else:
            pending.answer.set_result(ToolOutcome(output_text(msg.output)))

    def oversized_result(self, text: str, limit: int) -> bool:
        """A text frame over the frame limit: when it is a `tool_result` for a waiting call,
        that call fails with a sentence and the session goes on (-> True)."""
        head = text[:256]
        if '"tool_result"' not in head:
            return False
        match = _CALL_ID.search(head) or _CALL_ID.search(text[-512:])
        if match is None:
            return False
        pending = self.pending.get(match.group(1))
        if pending is None or pending.answer is None or pending.answer.done():
            return False
        pending.answer.set_result(ToolOutcome.failed(
            f"the client's result was larger than the frame limit of {limit} bytes"
        ))  # fmt: skip
        return True

    # --- interrupt, stop -----------------------------------------------------------------------

    async def cancel_all(self, reason: str, *, tell_engine: bool = True) -> None:
        """Cancel every call still running: the client hears `cancelled`, the model gets a
        cancellation result and waits for the user; later answers are discarded."""
        if not self.pending:
            return
        cancelled = list(self.pending.values())
        self.pending.clear()
        for pending in cancelled:
            if pending.task is not None:
                pending.task.cancel()
        for pending in cancelled:
            outcome = ToolOutcome.failed(reason, status="cancelled")
            if tell_engine:
                await self._finish(pending, outcome, respond=False)
            else:
                call = pending.call
                elapsed = int((time.monotonic() - pending.started) * 1000)
                self._finished[call.call_id] = "cancelled"
                self.say(P.tool_status_message(call.call_id, call.name, "cancelled", elapsed, reason))
                exchange = ToolExchange(call.call_id, call.name, call.arguments, outcome.output)
                self.turns.store_tool(exchange, "cancelled", reason)


__all__ = ["SessionToolset", "ToolCalls"]
