"""HTTP tools from a tools file (the shipped example, examples/tools/http_tools.yaml, plus a
file of endpoints that fail): the gateway POSTs the model's arguments with the file's headers
(secrets from the environment, never sent to clients), the body is the result, and a 500 or a
garbage body reaches the model as an error while the conversation goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.support.httpapp import serving
from voxgate.client import VoxgateClient
from voxgate.config import Settings
from voxgate.testing.openai_sim import OpenAISimulator, ToolTrigger
from voxgate.tools import ToolBox

KEY = "sk-http-tools"
SECRET = "currency-key-never-to-be-seen"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tools" / "http_tools.yaml"
TRIGGERS = [
    ToolTrigger.one("convert ten euros", "convert_currency", {"amount": 10, "from": "EUR", "to": "USD"}),
    ToolTrigger.one("convert nothing", "convert_currency", {"amount": "ten"}),
    ToolTrigger.one("server error", "broken_backend", {}),
    ToolTrigger.one("garbage answer", "garbage_backend", {}),
    ToolTrigger.one("binary answer", "binary_backend", {}),
    ToolTrigger.one("nobody home", "unreachable_backend", {}),
]


class Backend:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        routes = [
            Route("/convert", self.convert, methods=["POST"]),
            Route("/fail", lambda r: PlainTextResponse("database down", status_code=500), methods=["POST"]),
            Route("/garbage", lambda r: Response("<html>oops", media_type="application/json"), methods=["POST"]),
            Route("/binary", lambda r: Response(b"\xff\xfe\x00\x81", media_type="application/octet-stream"), methods=["POST"]),
        ]  # fmt: skip
        self.app = Starlette(routes=routes)

    async def convert(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("authorization") != f"Bearer {SECRET}":
            return PlainTextResponse("unauthorized", status_code=401)
        return JSONResponse({"amount": round(body["amount"] * 1.1, 2), "currency": body["to"]})


@pytest.fixture
async def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Backend, Path]]:
    backend = Backend()
    async with serving(backend.app) as url:
        monkeypatch.setenv("CURRENCY_API_URL", url)
        monkeypatch.setenv("CURRENCY_API_KEY", SECRET)
        # The shipped example, and endpoints that fail, in one file.
        failing = tmp_path / "tools.yaml"
        failing.write_text(EXAMPLE.read_text() + "".join(
            f"  - {{name: {name}, url: '{target}'}}\n"
            for name, target in [
                ("broken_backend", f"{url}/fail"), ("garbage_backend", f"{url}/garbage"),
                ("binary_backend", f"{url}/binary"), ("unreachable_backend", "http://127.0.0.1:9/x"),
            ]
        ))  # fmt: skip
        yield backend, failing


def test_the_example_file_loads_with_its_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CURRENCY_API_URL", "https://rates.example.com")
    monkeypatch.setenv("CURRENCY_API_KEY", SECRET)
    box = ToolBox.from_settings(Settings(_env_file=None, tools_file=str(EXAMPLE)))  # type: ignore[call-arg]
    tool = box.tools["convert_currency"]
    assert tool.url == "https://rates.example.com/convert"  # type: ignore[attr-defined]
    assert tool.headers == {"Authorization": f"Bearer {SECRET}"}  # type: ignore[attr-defined]
    assert tool.spec.parameters["required"] == ["amount", "from", "to"]
    monkeypatch.delenv("CURRENCY_API_KEY")
    with pytest.raises(ValueError, match="environment variable CURRENCY_API_KEY is not set"):
        ToolBox.from_settings(Settings(_env_file=None, tools_file=str(EXAMPLE)))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        ("tools: 3", "must hold a list 'tools'"),
        ("[{'url': 'http://x'}]", "'name' is required"),
        ("[{'name': 'a', 'url': 'ftp://x'}]", "url must start with http"),
        ("[{'name': 'a', 'url': 'http://x', 'method': 'BREW'}]", "method must be one of"),
        ("[{'name': 'a', 'url': 'http://x', 'parameters': {'type': 'array'}}]", "must describe an object"),
        ("[{'name': 'a', 'url': 'http://x'}, {'name': 'a', 'url': 'http://y'}]", "two tools are named 'a'"),
        ("tools: [", "is not valid YAML/JSON"),
    ],
)
def test_a_bad_tools_file_is_refused_with_a_sentence(tmp_path: Path, content: str, sentence: str) -> None:
    path = tmp_path / "tools.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=sentence):
        ToolBox.from_settings(Settings(_env_file=None, tools_file=str(path)))  # type: ignore[call-arg]


async def test_http_tools_through_the_gateway(backend: tuple[Backend, Path], make_settings, gateway_factory) -> None:
    server, failing = backend
    async with OpenAISimulator(keys=[KEY], pace=8.0, tool_triggers=TRIGGERS) as sim:
        settings = make_settings(engine="openai", openai_api_key=KEY, openai_url=sim.url,
                                 tools_file=str(failing), tool_filler_ms=0)  # fmt: skip
        async with gateway_factory(settings) as gw:
            async with VoxgateClient(gw.ws_url) as client:
                ready = await client.start()
                assert "convert_currency" in ready["tools"]
                await client.user_message("please convert ten euros")
                reply = await client.collect_reply(timeout=30)
                assert '"amount":11.0' in reply.assistant_text and '"currency":"USD"' in reply.assistant_text
                for words, error in [
                    ("convert nothing", "do not match the schema"),
                    ("server error", "answered HTTP 500: database down"),
                    ("garbage answer", "answered with invalid JSON"),
                    ("binary answer", "a body that is not text"),
                    ("nobody home", "could not be reached"),
                ]:
                    await client.user_message(words)
                    reply = await client.collect_reply(timeout=30)
                    ended = [m for m in reply.tool_statuses if m["status"] != "running"]
                    assert ended[0]["status"] == "error" and error in ended[0]["error"], ended
                    assert error in reply.assistant_text
                await client.user_message("please convert ten euros")
                assert '"amount":11.0' in (await client.collect_reply(timeout=30)).assistant_text
                assert SECRET not in repr(client.received)
    assert len(server.requests) == 2
    sent = server.requests[0]
    assert sent["body"] == {"amount": 10, "from": "EUR", "to": "USD"}
    assert sent["headers"]["x-voxgate-user"] and sent["headers"]["x-voxgate-call"].startswith("call_")
    assert SECRET not in repr(sim.accepted[-1].received)


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        ({"VOXGATE_TOOLS": "no_such_tool_module"}, "VOXGATE_TOOLS: cannot import 'no_such_tool_module'"),
        ({"VOXGATE_TOOLS_FILE": "/nonexistent/tools.yaml"}, "VOXGATE_TOOLS_FILE: cannot read"),
    ],
)
def test_serve_refuses_tools_it_cannot_load(tmp_path: Path, env: dict[str, str], sentence: str) -> None:
    import subprocess
    import sys

    from tests.support.procs import clean_env

    result = subprocess.run(
        [sys.executable, "-m", "voxgate", "serve", "--port", "0"],
        env=clean_env(VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/v.db", **env),
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert sentence in result.stderr.replace("\n", " ")
