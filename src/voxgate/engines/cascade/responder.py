"""Responders: what the assistant says back. Echo (offline, default) or any OpenAI-compatible
chat-completions endpoint (Ollama, llama.cpp server, vLLM, OpenAI) with streamed tokens.

A responder takes the whole message list (system prompt, history, the new user turn) and yields
text pieces as they come, so text-to-speech can start on the first sentence while the model is
still writing the rest. Given tools, a chat endpoint may instead (or after some words) call
them: the calls come last, as `RequestedCall`s, once their streamed arguments are complete.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestedCall:
    """A function call the model made (its arguments as the JSON text it wrote)."""

    call_id: str
    name: str
    arguments: str

ECHO_PREFIX = "Echo:"


@dataclass(frozen=True, slots=True)
class ResponderConfig:
    """The chat endpoint, when there is one (without it the assistant echoes)."""

    llm_url: str | None
    model: str
    api_key: str | None = field(repr=False)
    #: How long the endpoint may take to start answering (and between streamed pieces).
    read_timeout_s: float

    def describe(self) -> str:
        if self.llm_url:
            return f"chat completions {self.model} at {self.llm_url} (VOXGATE_LLM_URL set)"
        return "echo (VOXGATE_LLM_URL unset)"


class ResponderError(Exception):
    """The chat endpoint failed for this turn; the message is a sentence for the user."""


class Responder(Protocol):
    name: str

    def stream(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[str | RequestedCall]: ...

    async def aclose(self) -> None: ...


class EchoResponder:
    """Says back what it heard, plainly labelled, so nobody mistakes it for a model."""

    name = "echo"

    async def stream(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[str | RequestedCall]:
        heard = " ".join(_sentence(text) for text in _unanswered(messages))
        text = f"{ECHO_PREFIX} you said {heard}" if heard else f"{ECHO_PREFIX} I heard nothing."
        # Word by word, like a model would stream, so the pipeline behaves the same.
        words = text.split(" ")
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word

    async def aclose(self) -> None:
        return None


def _unanswered(messages: list[Message]) -> list[str]:
    """What the user said since the assistant last spoke (several turns when replies were held
    back), in order; the last user turn when there is none since."""
    said: list[str] = []
    for message in reversed(messages):
        if message["role"] == "assistant":
            break
        if message["role"] == "user" and str(message["content"]).strip():
            said.append(str(message["content"]).strip())
    if not said:
        last = next((str(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
        said = [last.strip()] if last.strip() else []
    return said[::-1]


def _sentence(text: str) -> str:
    return text if text[-1] in ".!?" else text + "."


def chat_completions_url(url: str) -> str:
    """Accept a base (`http://localhost:11434/v1`) or the full endpoint URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class ChatCompletionsResponder:
    """Streams `POST /chat/completions` (`stream: true`, server-sent events)."""

    name = "llm"

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        self.url = chat_completions_url(url)
        self.model = model
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # One client per session keeps the connection warm between turns (first-token latency).
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        )

    async def stream(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[str | RequestedCall]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if tools:
            body["tools"] = tools
        #: Streamed calls by index: [id, name, arguments so far].
        calls: dict[int, list[str]] = {}
        try:
            async with self._client.stream("POST", self.url, json=body) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                    raise ResponderError(_http_sentence(self.url, resp.status_code, detail))
                content_type = resp.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    # A server that ignored `stream: true`: one JSON body.
                    data = json.loads(await resp.aread())
                    text = _message_text(data)
                    if text:
                        yield text
                    for call in _message_calls(data):
                        yield call
                    return
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        continue
                    if "error" in chunk:
                        raise ResponderError(
                            f"the language model at {self.url} failed: "
                            f"{_error_message(chunk['error'])}"
                        )
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        piece = delta.get("content")
                        if piece:
                            yield piece
                        for part in delta.get("tool_calls") or ():
                            _gather_call(calls, part)
            for index in sorted(calls):
                call_id, name, arguments = calls[index]
                if name:
                    yield RequestedCall(call_id or f"call_{index}", name, arguments)
        except httpx.TimeoutException as exc:
            raise ResponderError(
                f"the language model at {self.url} did not answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise ResponderError(
                f"the language model at {self.url} is unreachable ({type(exc).__name__}): "
                "check VOXGATE_LLM_URL and that the server is running"
            ) from exc
        except ValueError as exc:
            raise ResponderError(f"the language model at {self.url} sent invalid JSON") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def make_responder(config: ResponderConfig) -> Responder:
    if not config.llm_url:
        return EchoResponder()
    return ChatCompletionsResponder(
        config.llm_url, config.model, config.api_key, read_timeout_s=config.read_timeout_s
    )


def _message_text(data: dict[str, Any]) -> str:
    choices = data.get("choices") or [{}]
    return str((choices[0].get("message") or {}).get("content") or "")


def _gather_call(calls: dict[int, list[str]], part: Any) -> None:
    """One streamed piece of a tool call: the first names it, the rest add arguments."""
    if not isinstance(part, dict):
        return
    index = part.get("index", 0)
    call = calls.setdefault(index if isinstance(index, int) else 0, ["", "", ""])
    if part.get("id"):
        call[0] = str(part["id"])
    function = part.get("function") or {}
    if function.get("name"):
        call[1] = str(function["name"])
    if function.get("arguments"):
        call[2] += str(function["arguments"])


def _message_calls(data: dict[str, Any]) -> list[RequestedCall]:
    choices = data.get("choices") or [{}]
    calls = (choices[0].get("message") or {}).get("tool_calls") or []
    return [
        RequestedCall(str(c.get("id") or f"call_{i}"), str((c.get("function") or {}).get("name")),
                      str((c.get("function") or {}).get("arguments") or ""))
        for i, c in enumerate(calls) if isinstance(c, dict)
    ]  # fmt: skip


def _error_message(err: Any) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


def _http_sentence(url: str, status: int, detail: str) -> str:
    try:
        detail = _error_message(json.loads(detail).get("error", detail))
    except (ValueError, AttributeError):
        pass
    if status in (401, 403):
        return (
            f"the language model at {url} rejected the key (HTTP {status}): "
            f"check VOXGATE_LLM_API_KEY ({detail})"
        )
    return f"the language model at {url} answered HTTP {status}: {detail}"
