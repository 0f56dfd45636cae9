"""An OpenAI-compatible REST simulator: chat completions (streamed and not), transcriptions and
speech, with fault modes. Shipped so the cascade's cloud parts can be developed and tested
offline, against the same wire shapes the real service uses.

Usage (inside a running event loop; the server shares it, no thread)::

    async with LLMSimulator(reply="Hello there. How can I help?") as sim:
        settings = Settings(llm_url=sim.base_url)        # http://127.0.0.1:PORT/v1
        ...
        sim.requests[-1].json["messages"]                 # what the client sent

Faults: `sim.fault = "http_500" | "http_401" | "slow"` (optionally only for the next
`sim.fault_count` requests), and `await sim.stop()` for connection refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from voxgate.audio import read_wav, resample, wav_bytes
from voxgate.testing.tooling import ToolTrigger, tool_answer, triggered_calls

Fault = Literal["http_500", "http_401", "slow"]


@dataclass(slots=True)
class RecordedRequest:
    """One request as the simulator received it."""

    path: str
    authorization: str | None
    json: dict[str, Any] | None = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    received_at: float = 0.0

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list((self.json or {}).get("messages") or [])

    @property
    def model(self) -> str | None:
        return (self.json or self.form or {}).get("model")  # type: ignore[return-value]


def _error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    # The exact error envelope the OpenAI REST API uses.
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """multipart/form-data without python-multipart: the stdlib email parser handles it."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    form: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        raw = part.get_payload(decode=True)
        payload = raw if isinstance(raw, bytes) else b""
        if part.get_filename():
            files[str(name)] = payload
        else:
            form[str(name)] = payload.decode("utf-8", "replace")
    return form, files


class LLMSimulator:
    """A local OpenAI-compatible server on 127.0.0.1 (ephemeral port), run in the caller's loop."""

    def __init__(
        self,
        reply: str = "Hello! This is the simulated assistant. How can I help you today?",
        *,
        token_delay_s: float = 0.0,
        api_key: str | None = None,
        transcript: str = "hello from the simulator",
        slow_s: float = 5.0,
        model: str = "sim-model",
        tool_triggers: Iterable[ToolTrigger] = (),
    ) -> None:
        self.reply = reply
        #: Scripted function calls (see `ToolTrigger`): the model calls tools the request
        #: declares when the last user message matches, and quotes their outputs after.
        self.tool_triggers = list(tool_triggers)
        self.token_delay_s = token_delay_s
        #: When set, requests without `Authorization: Bearer <api_key>` get 401.
        self.api_key = api_key
        #: What `/v1/audio/transcriptions` answers (a list is used in turn, then its last item).
        self.transcript: str | list[str] = transcript
        self.slow_s = slow_s
        self.model = model
        self.fault: Fault | None = None
        #: How many more requests the fault applies to (None = all of them).
        self.fault_count: int | None = None
        self.requests: list[RecordedRequest] = []
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self.port = 0
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
                Route("/v1/audio/speech", self._speech, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> LLMSimulator:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        self._server = server
        # `startup` + `main_loop` directly: `serve()` would install process signal handlers.
        await server.startup(sockets=[sock])
        self._task = asyncio.create_task(self._run(server, sock))
        return self

    async def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.main_loop()
        finally:
            with contextlib.suppress(Exception):
                await server.shutdown(sockets=[sock])

    async def stop(self) -> None:
        """Stop listening: later requests get `connection refused` (the port stays reserved
        only until the OS hands it out again)."""
        if self._server is None:
            return
        self._server.should_exit = True
        self._server.force_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=5.0)
        if self._sock is not None:
            self._sock.close()
        self._server = None
        self._task = None

    async def __aenter__(self) -> LLMSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- helpers ----------------------------------------------------------------------------
    def _take_fault(self) -> Fault | None:
        if self.fault is None:
            return None
        fault = self.fault
        if self.fault_count is not None:
            self.fault_count -= 1
            if self.fault_count <= 0:
                self.fault = None
                self.fault_count = None
        return fault

    def _auth_error(self, request: Request, fault: Fault | None) -> Response | None:
        auth = request.headers.get("authorization")
        if fault == "http_401" or (self.api_key and auth != f"Bearer {self.api_key}"):
            return JSONResponse(
                _error_body(
                    "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
                ),
                status_code=401,
            )
        if fault == "http_500":
            return JSONResponse(
                _error_body(
                    "The server had an error while processing your request.", "server_error", None
                ),
                status_code=500,
            )
        return None

    def _tokens(self, reply: str | None = None) -> list[str]:
        words = (self.reply if reply is None else reply).split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    def _answer(self, body: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
        """What the model says (text) or calls (name, arguments) for these messages."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        outputs: list[str] = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            outputs.insert(0, str(message.get("content") or ""))
        if outputs:
            return tool_answer(outputs), []
        declared = {
            str((t.get("function") or {}).get("name"))
            for t in body.get("tools") or []
            if isinstance(t, dict)
        }
        last = messages[-1] if messages else {}
        if last.get("role") == "user" and self.tool_triggers:
            content = last.get("content")
            said = content if isinstance(content, str) else " ".join(
                str(p.get("text", "")) for p in content or [] if isinstance(p, dict)
            )  # fmt: skip
            calls = triggered_calls(self.tool_triggers, said, declared)
            if calls:
                return "", calls
        return self.reply, []

    async def _json_request(self, request: Request) -> dict[str, Any] | Response:
        """The common front of the JSON routes: parse, record, then apply the fault set for
        this request (an auth error answers at once; `slow` delays). Returns the body, or the
        response to send instead."""
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(
                _error_body("invalid JSON body", "invalid_request_error", None), 400
            )
        self.requests.append(
            RecordedRequest(
                request.url.path,
                request.headers.get("authorization"),
                json=body,
                received_at=time.monotonic(),
            )
        )
        error = await self._apply_fault(request)
        if error is not None:
            return error
        return body if isinstance(body, dict) else {}

    async def _apply_fault(self, request: Request) -> Response | None:
        """Apply the fault set for this request: an auth error answers at once, `slow` waits."""
        fault = self._take_fault()
        error = self._auth_error(request, fault)
        if error is not None:
            return error
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        return None

    # --- routes -----------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        body = await self._json_request(request)
        if isinstance(body, Response):
            return body
        problem = _tool_messages_problem(body.get("messages") or [])
        if problem is not None:
            return JSONResponse(_error_body(problem, "invalid_request_error", None), 400)
        reply, calls = self._answer(body)
        call_ids = [f"call_sim{len(self.requests)}x{i}" for i in range(len(calls))]
        model = body.get("model") or self.model
        created = int(time.time())
        cid = f"chatcmpl-sim{len(self.requests)}"
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": reply if not calls else None,
                                **({"tool_calls": [
                                    {"id": cid_, "type": "function",
                                     "function": {"name": name, "arguments": args}}
                                    for cid_, (name, args) in zip(call_ids, calls, strict=True)
                                ]} if calls else {}),
                            },
                            "finish_reason": "tool_calls" if calls else "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 0,
                        "completion_tokens": len(self._tokens(reply)),
                        "total_tokens": len(self._tokens(reply)),
                    },
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        tokens = self._tokens(reply)
        delay = self.token_delay_s

        async def events() -> AsyncIterator[bytes]:
            if calls:
                # The model's calls: each announced with its id and name, then its arguments
                # in two pieces, as the real stream splits them.
                yield chunk({"role": "assistant", "content": None}, None)
                for index, (name, args) in enumerate(calls):
                    yield chunk({"tool_calls": [{"index": index, "id": call_ids[index],
                                 "type": "function", "function": {"name": name, "arguments": ""}}]},
                                None)  # fmt: skip
                    half = len(args) // 2
                    for piece in (args[:half], args[half:]):
                        yield chunk({"tool_calls": [{"index": index,
                                     "function": {"arguments": piece}}]}, None)  # fmt: skip
                yield chunk({}, "tool_calls")
                yield b"data: [DONE]\n\n"
                return
            yield chunk({"role": "assistant", "content": ""}, None)
            for token in tokens:
                if delay:
                    await asyncio.sleep(delay)
                yield chunk({"content": token}, None)
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _transcriptions(self, request: Request) -> Response:
        body = await request.body()
        form, files = _parse_multipart(request.headers.get("content-type", ""), body)
        self.requests.append(
            RecordedRequest(
                request.url.path,
                request.headers.get("authorization"),
                form=form,
                files=files,
                received_at=time.monotonic(),
            )
        )
        error = await self._apply_fault(request)
        if error is not None:
            return error
        if "file" not in files or "model" not in form:
            return JSONResponse(
                _error_body("file and model are required", "invalid_request_error", None), 400
            )
        if isinstance(self.transcript, list):
            text = self.transcript.pop(0) if len(self.transcript) > 1 else self.transcript[0]
        else:
            text = self.transcript
        return JSONResponse({"text": text})

    async def _speech(self, request: Request) -> Response:
        body = await self._json_request(request)
        if isinstance(body, Response):
            return body
        text = str(body.get("input") or "")
        fmt = body.get("response_format") or "mp3"
        if fmt not in ("pcm", "wav"):
            return JSONResponse(
                _error_body(
                    f"the simulator speaks only pcm and wav, not {fmt}",
                    "invalid_request_error",
                    None,
                ),
                400,
            )
        pcm = await asyncio.to_thread(_espeak_pcm24k, text)
        if fmt == "wav":
            return Response(wav_bytes(pcm, 24000), media_type="audio/wav")
        return Response(pcm, media_type="audio/pcm")


def _tool_messages_problem(messages: list[Any]) -> str | None:
    """What the real API refuses about tool messages: a `tool` message must answer a call of
    the assistant message before it, and every such call must be answered before anything
    else follows."""
    open_calls: set[str] = set()
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'."
                )
            open_calls.discard(call_id)
            continue
        if open_calls:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(sorted(open_calls))}"
            )
        if role == "assistant":
            open_calls = {
                str(call.get("id")) for call in message.get("tool_calls") or []
                if isinstance(call, dict)
            }  # fmt: skip
    if open_calls:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(sorted(open_calls))}"
        )
    return None


def _espeak_pcm24k(text: str) -> bytes:
    """OpenAI's `pcm` format: 24 kHz PCM16 mono, here spoken by espeak-ng."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed: run `apt-get install espeak-ng`")
    proc = subprocess.run(
        [binary, "--stdout", "--", text], capture_output=True, check=True, timeout=60
    )
    pcm, rate = read_wav(proc.stdout)
    return resample(pcm, rate, 24000)


__all__ = ["LLMSimulator", "RecordedRequest"]


def run_llm_sim(
    host: str = "127.0.0.1",
    port: int = 9300,
    reply: str = "Hello! This is the simulated assistant. How can I help you today?",
    api_key: str | None = None,
    token_delay_s: float = 0.0,
    transcript: str = "hello from the simulator",
) -> None:
    """Run the simulator until interrupted (the `voxgate simulate llm` CLI verb)."""
    sim = LLMSimulator(reply, token_delay_s=token_delay_s, api_key=api_key, transcript=transcript)
    # Bind before saying where: the printed line is a promise a script may act on at once.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    shown = f"[{host}]" if ":" in host else host
    print(
        f"OpenAI-compatible REST simulator on http://{shown}:{sock.getsockname()[1]}/v1 "
        "(chat completions, transcriptions, speech)",
        flush=True,
    )
    config = uvicorn.Config(sim.app, log_level="warning", lifespan="off", access_log=False)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
