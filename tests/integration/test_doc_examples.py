"""The Python examples in docs/protocol.md run as written against a live gateway, and the
client's readers do what that page says about fatal errors."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from voxgate.audio import write_wav
from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.testing.speech import synthesize

DOCS = Path(__file__).resolve().parents[2] / "docs"
SECRET = "doc-examples-jwt-secret-0123456789abcdefghij"


def client_examples() -> list[str]:
    """Every ```python block of docs/protocol.md that uses voxgate's own client."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "protocol.md").read_text(), re.S)
    return [b for b in blocks if "from voxgate.client import" in b]


async def run_example(code: str, port: int, cwd: Path) -> tuple[int, str]:
    # The only change: the documented address becomes this test's gateway.
    code = code.replace("ws://127.0.0.1:8000", f"ws://127.0.0.1:{port}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=cwd, env=os.environ.copy(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode()


def test_the_page_has_both_client_examples() -> None:
    examples = client_examples()
    assert len(examples) == 2
    assert all("asyncio.run(main())" in e for e in examples)


async def test_conversation_example_runs_as_written(make_settings, gateway_factory, tmp_path) -> None:
    write_wav(tmp_path / "hello.wav", synthesize("hello, can you hear me", 16000), 16000)
    example = next(e for e in client_examples() if "hello.wav" in e)
    async with gateway_factory(make_settings(engine="cascade")) as gw:
        code, out = await run_example(example, gw.port, tmp_path)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("session ") and "engine cascade" in lines[0]
    assert " -> " in lines[1] and lines[1].rstrip().endswith("bytes")
    assert int(lines[1].split()[-2]) > 0  # the reply had audio


async def test_refused_client_example_prints_the_gateways_reason(
    make_settings, gateway_factory, tmp_path
) -> None:
    example = next(e for e in client_examples() if "expired" in e)
    async with gateway_factory(make_settings(auth="jwt", jwt_secret=SECRET)) as gw:
        code, out = await run_example(example, gw.port, tmp_path)
    assert code == 0, out
    assert out.startswith("unauthorized "), out


async def test_readers_raise_on_a_fatal_error(make_settings, gateway_factory) -> None:
    settings = make_settings(auth="jwt", jwt_secret=SECRET)
    async with gateway_factory(settings) as gw:
        # recv: the fatal error is raised, and still kept in `received`.
        async with VoxgateClient(gw.ws_url, token="expired") as client:
            with pytest.raises(ProtocolFailure) as info:
                while True:
                    await client.recv(10)
            assert info.value.error is not None and info.value.error["code"] == "unauthorized"
            assert info.value.error in client.received
            assert client.close_code == 4401  # the close that followed is known at once
        # events(): the loop does not end silently on a fatal error.
        async with VoxgateClient(gw.ws_url, token="expired") as client:
            seen: list[str] = []
            with pytest.raises(ProtocolFailure) as info:
                async for message in client.events(10):
                    seen.append(message["type"])
            assert info.value.error is not None and info.value.error["code"] == "unauthorized"
        # Asked for explicitly, the fatal error is returned instead.
        async with VoxgateClient(gw.ws_url, token="expired") as client:
            message = await client.recv(10, fatal_raises=False)
            assert message["type"] == "error" and message["fatal"] is True


async def test_events_ends_quietly_after_stop(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings()) as gw, VoxgateClient(gw.ws_url) as client:
        await client.start()
        await client.stop()
        kinds = [message["type"] async for message in client.events(10)]
        assert client.close_code == 1000
        assert "error" not in kinds
