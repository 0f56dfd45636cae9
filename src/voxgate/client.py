"""An async Python client for the neutral protocol v1 (used by the CLI, tests and benchmarks).

    async with VoxgateClient("ws://127.0.0.1:8000/ws") as client:
        ready = await client.start(binary=True)
        await client.stream_wav("hello.wav")           # real-time pace
        reply = await client.collect_reply()           # transcripts + audio of one turn
        print(reply.user_text, "->", reply.assistant_text)

Every received message is a dict; audio (binary frame or JSON) arrives as
`{"type": "audio", "pcm16": <bytes>, "itemId": ...}` so callers never decode base64 themselves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from voxgate.audio import StreamResampler, bytes_for_ms, read_wav

#: A client tool: called with the arguments object; returns the output (sync or async).
ToolHandler = Callable[[dict[str, Any]], Any]


class ProtocolFailure(Exception):
    """The gateway sent a fatal error or closed while we waited for something."""

    def __init__(self, message: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = error


@dataclass
class Reply:
    """One assistant turn as a client saw it."""

    user_text: str = ""
    assistant_text: str = ""
    audio: bytearray = field(default_factory=bytearray)
    response_status: str | None = None
    interrupted: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    #: `tool_status` messages of this turn (running, then how each call ended).
    tool_statuses: list[dict[str, Any]] = field(default_factory=list)


class VoxgateClient:
    def __init__(
        self,
        url: str,
        token: str | Callable[[], str | None] | None = None,
        *,
        token_via: str = "header",
        origin: str | None = None,
        open_timeout: float = 10.0,
        max_size: int | None = 16 * 1024 * 1024,
        ssl: SSLContext | None = None,
        follow_drain: bool = False,
    ) -> None:
        """`token`: a string, or a function called before every connection (single-use session
        tokens need a new one each time). `follow_drain`: when the gateway process drains (a
        `status` `disconnected` with `server_shutdown`, then close 1001), connect again at once
        through the same URL (a load balancer sends it to a process that is up) and resume the
        conversation with the same `start` options; the reader then sees the new
        `session_ready` instead of `ProtocolFailure`."""
        self.url = url
        #: For `wss://` behind a private CA or a self-signed certificate; None: system trust.
        self.ssl = ssl
        self.token = token
        self.token_via = token_via  # header | query | subprotocol
        self.origin = origin
        self.open_timeout = open_timeout
        self.max_size = max_size
        self.ws: ClientConnection | None = None
        self.session: dict[str, Any] | None = None
        self.binary = False
        self.input_rate = 24000
        self.output_rate = 24000
        self.received: list[dict[str, Any]] = []
        self.current_item: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.subprotocol: str | None = None
        #: Client tools (`register_tool`): offered in `start`, answered as calls arrive.
        self.tools: dict[str, tuple[dict[str, Any], ToolHandler]] = {}
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self.follow_drain = follow_drain
        #: Times this client followed a drain to another process.
        self.resumes = 0
        self._start_options: dict[str, Any] = {}
        self._drained = False

    def register_tool(
        self,
        name: str,
        handler: ToolHandler,
        *,
        description: str = "",
        parameters: dict[str, Any] | None = None,
    ) -> None:
        """Offer a tool that runs here: `start` declares it, and each `tool_call` for it runs
        `handler(arguments)` (sync or async) and sends its return value as the `tool_result`
        (an exception is sent as the call's `error`). Register before `start`."""
        declaration = {"name": name, "description": description,
                       "parameters": parameters or {"type": "object", "properties": {}}}  # fmt: skip
        self.tools[name] = (declaration, handler)

    async def _answer_tool(self, message: dict[str, Any]) -> None:
        _, handler = self.tools[message["name"]]
        try:
            result = handler(message.get("arguments") or {})
            if asyncio.iscoroutine(result):
                result = await result
            answer: dict[str, Any] = {"output": result}
        except Exception as exc:  # noqa: BLE001 - the tool's failure is the call's error
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed, ProtocolFailure):
            await self.send({"type": "tool_result", "callId": message["callId"], **answer})

    # --- connection -----------------------------------------------------------------------

    async def connect(self) -> VoxgateClient:
        url = self.url
        headers: dict[str, str] = {}
        subprotocols = ["voxgate.v1"]
        token = self.token() if callable(self.token) else self.token
        if token:
            if self.token_via == "header":
                headers["Authorization"] = f"Bearer {token}"
            elif self.token_via == "query":
                url += ("&" if "?" in url else "?") + f"token={token}"
            else:
                subprotocols.append(f"voxgate.bearer.{token}")
        # Only when given: websockets rejects `ssl` on a ws:// URL.
        extra: dict[str, Any] = {"ssl": self.ssl} if self.ssl is not None else {}
        self.ws = await connect(
            url,
            additional_headers=headers,
            subprotocols=subprotocols,  # type: ignore[arg-type]
            origin=self.origin,  # type: ignore[arg-type]
            open_timeout=self.open_timeout,
            max_size=self.max_size,
            compression=None,
            **extra,
        )
        self.subprotocol = self.ws.subprotocol
        return self

    async def __aenter__(self) -> VoxgateClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    # --- sending ----------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(orjson.dumps(message).decode())

    async def send_raw(self, data: str | bytes) -> None:
        """Send one frame. If the gateway already closed the socket (a refusal: bad token,
        limit), raise `ProtocolFailure` carrying the gateway's own fatal error, not a bare
        connection error: the reason is in the messages it sent before closing."""
        assert self.ws is not None, "connect() first"
        from websockets.exceptions import ConnectionClosed

        try:
            await self.ws.send(data)
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
            self.close_reason = exc.rcvd.reason if exc.rcvd else None
            fatal = await self._drain_fatal()
            detail = f"{fatal['code']}: {fatal['message']}" if fatal else f"code {self.close_code}"
            raise ProtocolFailure(f"the gateway closed the connection ({detail})", fatal) from None

    async def _drain_fatal(self) -> dict[str, Any] | None:
        """Read what the gateway sent before closing; return its fatal error, if any."""
        fatal = None
        while True:
            try:
                message = await self.recv(1.0, fatal_raises=False)
            except (ProtocolFailure, TimeoutError):
                return fatal
            if message.get("type") == "error" and message.get("fatal"):
                fatal = message

    async def start(self, timeout: float = 30.0, **options: Any) -> dict[str, Any]:
        """Send `start` (camelCase options as in the protocol) and wait for `session_ready`."""
        message = {"type": "start", **options}
        if self.tools and "tools" not in options:
            message["tools"] = [declaration for declaration, _ in self.tools.values()]
        self.binary = bool(options.get("binary", False))
        self._start_options = options
        await self.send(message)
        ready = await self.wait_for("session_ready", timeout=timeout)
        self.session = ready
        self.input_rate = ready["inputAudio"]["rate"]
        self.output_rate = ready["outputAudio"]["rate"]
        return ready

    async def send_audio(self, pcm16: bytes) -> None:
        if self.binary:
            await self.send_raw(pcm16)
        else:
            await self.send({"type": "audio_chunk", "pcm16Base64": base64.b64encode(pcm16).decode()})

    async def stream_audio(
        self, pcm16: bytes, *, realtime: bool = True, frame_ms: int = 20, speed: float = 1.0
    ) -> int:
        """Send audio (at the session input rate) in `frame_ms` frames; returns frames sent.

        Real-time pacing is absolute (frame n goes out at start + n*frame_ms), so a late frame
        does not delay the ones after it.
        """
        step = bytes_for_ms(frame_ms, self.input_rate)
        start = time.perf_counter()
        n = 0
        for i in range(0, len(pcm16), step):
            if realtime:
                due = start + n * frame_ms / 1000.0 / speed
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send_audio(pcm16[i : i + step])
            n += 1
        return n

    async def stream_wav(self, path: str | Path, *, realtime: bool = True, speed: float = 1.0) -> int:
        pcm, rate = read_wav(path)
        if rate != self.input_rate:
            rs = StreamResampler(rate, self.input_rate)
            pcm = rs.process(pcm) + rs.flush()
        return await self.stream_audio(pcm, realtime=realtime, speed=speed)

    async def commit(self) -> None:
        await self.send({"type": "commit"})

    async def user_message(self, text: str) -> None:
        await self.send({"type": "user_message", "text": text})

    async def context_update(self, payload: dict[str, Any]) -> None:
        await self.send({"type": "context_update", "payload": payload})

    async def interrupt(self, played_ms: int | None = None) -> None:
        message: dict[str, Any] = {"type": "interrupt"}
        if played_ms is not None:
            message["playedMs"] = played_ms
        await self.send(message)

    async def hold(self) -> None:
        """Keep the assistant from answering until `allow_next` (engines with turnControl)."""
        await self.send({"type": "hold"})

    async def allow_next(self, respond: bool = False) -> None:
        """Release a hold; `respond=True`: answer now everything said since the last reply."""
        await self.send({"type": "allow_next", "respond": respond})

    async def barge_in(self, played_ms: int | None = None) -> None:
        """Stop the assistant now, whatever the engine decided (refused if nothing plays)."""
        message: dict[str, Any] = {"type": "barge_in"}
        if played_ms is not None:
            message["playedMs"] = played_ms
        await self.send(message)

    async def ping(self, ping_id: str | int | None = None) -> None:
        await self.send({"type": "ping", "id": ping_id} if ping_id is not None else {"type": "ping"})

    async def stop(self) -> None:
        await self.send({"type": "stop"})

    # --- receiving --------------------------------------------------------------------------

    async def recv(self, timeout: float | None = None, *, fatal_raises: bool = True) -> dict[str, Any]:
        """The next message; raises `ProtocolFailure` when the socket closes, and on a fatal
        `error` (kept in `received` and in the exception's `.error`) unless `fatal_raises` is
        false: after a fatal error the session is over, and a caller looping on `recv` should
        not have to remember to look for one."""
        assert self.ws is not None, "connect() first"
        from websockets.exceptions import ConnectionClosed

        try:
            if timeout is None:
                raw = await self.ws.recv()
            else:
                raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
            self.close_reason = exc.rcvd.reason if exc.rcvd else None
            if self._drained and self.close_code == 1001 and self.session is not None:
                self._drained = False
                return await self._resume_elsewhere(timeout)
            raise ProtocolFailure(f"connection closed (code {self.close_code})") from None
        if isinstance(raw, bytes):
            message: dict[str, Any] = {"type": "audio", "pcm16": raw, "itemId": self.current_item, "binary": True}
        else:
            message = orjson.loads(raw)
            kind = message.get("type")
            if kind == "audio":
                message["pcm16"] = base64.b64decode(message.get("chunkBase64", ""))
                self.current_item = message.get("itemId", self.current_item)
            elif kind == "speaking" and message.get("itemId"):
                self.current_item = message["itemId"]
            elif kind == "transcript" and message.get("role") == "assistant":
                self.current_item = message.get("itemId", self.current_item)
            elif kind == "status" and message.get("reason") == "server_shutdown":
                self._drained = self.follow_drain and message.get("status") == "disconnected"
            elif kind == "tool_call" and message.get("name") in self.tools:
                task = asyncio.create_task(self._answer_tool(message))
                self._tool_tasks.add(task)
                task.add_done_callback(self._tool_tasks.discard)
        self.received.append(message)
        if fatal_raises and message.get("type") == "error" and message.get("fatal"):
            await self._await_close()
            raise ProtocolFailure(f"fatal error: {message.get('code')}: {message.get('message')}", message)
        return message

    async def _resume_elsewhere(self, timeout: float | None) -> dict[str, Any]:
        """The process we were on drained: connect again at once, resume the conversation with
        the same `start` options, and return the new `session_ready` (a refusal raises
        `ProtocolFailure` as any other)."""
        assert self.session is not None
        conversation = self.session.get("conversationId")
        await self.connect()
        self.resumes += 1
        message = {"type": "start", **self._start_options, "conversationId": conversation}
        if self.tools and "tools" not in self._start_options:
            message["tools"] = [declaration for declaration, _ in self.tools.values()]
        await self.send(message)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 30.0)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = await self.recv(left)
            if ready.get("type") == "session_ready":
                self.session = ready
                return ready

    async def _await_close(self, timeout: float = 2.0) -> None:
        """After a fatal error the gateway closes at once: wait (briefly) for that close, so
        `close_code` / `close_reason` are set when the caller looks at them."""
        assert self.ws is not None
        try:
            await asyncio.wait_for(self.ws.wait_closed(), timeout)
        except TimeoutError:
            return
        self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason

    async def events(self, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every message until the session ends: it ends quietly on a normal close (1000, as
        after `stop()`), and raises `ProtocolFailure` on a fatal error or any other close."""
        while True:
            try:
                message = await self.recv(timeout)
            except ProtocolFailure as exc:
                if exc.error is None and self.close_code == 1000:
                    return
                raise
            yield message

    async def wait_for(
        self,
        kind: str,
        *,
        timeout: float = 30.0,
        where: Any = None,
        fail_on_fatal: bool = True,
    ) -> dict[str, Any]:
        """Read until a message of `kind` (matching `where(msg)` if given) arrives."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no '{kind}' message within {timeout} s")
            try:
                message = await self.recv(remaining, fatal_raises=fail_on_fatal)
            except TimeoutError:
                raise TimeoutError(f"no '{kind}' message within {timeout} s") from None
            if message.get("type") == kind and (where is None or where(message)):
                return message
            if fail_on_fatal and message.get("type") == "error" and message.get("fatal"):
                raise ProtocolFailure(f"fatal error: {message.get('code')}: {message.get('message')}", message)

    async def collect_reply(self, timeout: float = 60.0) -> Reply:
        """Gather one assistant turn: transcripts and audio until `response_done`. A response
        that only called tools is part of the turn: collecting goes on to the answer that
        follows their results (the calls are in `Reply.tool_statuses`)."""
        reply = Reply()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete reply within {timeout} s")
            message = await self.recv(remaining)
            reply.events.append(message)
            kind = message.get("type")
            if kind == "transcript":
                if message["role"] == "user":
                    reply.user_text = message["text"]
                else:
                    reply.assistant_text = message["text"]
            elif kind == "audio":
                reply.audio.extend(message["pcm16"])
            elif kind == "interrupted":
                reply.interrupted = True
            elif kind == "error" and message.get("fatal"):
                raise ProtocolFailure(f"fatal error: {message.get('code')}: {message.get('message')}", message)
            elif kind == "tool_status":
                reply.tool_statuses.append(message)
            elif kind == "response_done":
                reply.response_status = message.get("status")
                calling = any(m["status"] == "running" for m in reply.tool_statuses)
                if calling and not reply.assistant_text and not reply.audio:
                    continue
                return reply
