"""Every code example in the README and docs/*.md runs as written, or says why it cannot.

The blocks and their markers are described in `tests/support/docblocks.py`. Each page runs in
its own directory, as a reader would run it: `HOME` is that directory (so the default store is
there), `voxgate` and `python` are this environment's, and the checkout's `make run` works
(`.venv/bin/voxgate` is this environment's command). The only changes to the blocks are the
addresses: the documented ports (8000, 9100, 9200, 9300) become free ones, `VOXGATE_PORT` and
`VOXGATE_URL` say so to `voxgate serve` / `make run` and `voxgate talk`, and a browser example's
`voice.example.com` is the gateway it runs against.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.browser import ServerProcess, launch_chromium, start_gateway
from tests.support.docblocks import (
    ROOT,
    Block,
    expected_lines,
    missing_output,
    pages,
    parse,
    problems,
)
from tests.support.procs import VOXGATE, clean_env, free_port
from voxgate import protocol as P
from voxgate.config import Settings

#: The ports the docs use, each replaced by a free one.
DOC_PORTS = (8000, 9100, 9200, 9300)
BIN = str(Path(sys.executable).parent)
OUTPUT_TIMEOUT_S = 60.0


def test_every_block_is_run_or_says_why_not() -> None:
    found = [problem for page in pages() for block in parse(page) for problem in problems(block)]
    assert not found, "\n".join(found)
    for page in pages():
        blocks = parse(page)
        for before, block in zip([None, *blocks], blocks, strict=False):
            if block.expected_output:
                assert before is not None and before.not_run is None and before.lang not in ("text", "json"), (
                    f"{block}: expected-output follows no block that runs"
                )
            if block.lang in ("html", "js"):
                after = blocks[blocks.index(block) + 1] if block is not blocks[-1] else None
                assert after is not None and after.expected_output, (
                    f"{block}: a browser example needs an expected-output block (what it logs)"
                )


# --------------------------------------------------------------------------------------------
# Shared servers: gateways by settings, a Chromium, made once per module and only when needed
# --------------------------------------------------------------------------------------------


@dataclass
class Gateway:
    server: ServerProcess
    env: dict[str, str]
    jwt: str | None = None

    @property
    def port(self) -> int:
        return self.server.port


@dataclass
class Shared:
    workdir: Path
    gateways: dict[tuple[str, ...], Gateway] = field(default_factory=dict)
    processes: list[ServerProcess] = field(default_factory=list)
    _playwright: object | None = None
    _browser: object | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def gateway(self, words: list[str]) -> Gateway:
        key = tuple(sorted(words))
        if key not in self.gateways:
            self.gateways[key] = self._start_gateway(words)
        return self.gateways[key]

    def _start_gateway(self, words: list[str]) -> Gateway:
        workdir = self.workdir / f"gateway-{secrets.token_hex(4)}"  # started side by side
        workdir.mkdir(parents=True)
        settings = dict(word.split("=", 1) for word in words if "=" in word)
        for word in words:
            if word == "openai-simulator":
                settings.update(self._openai_simulator(workdir))
            elif "=" not in word:
                raise AssertionError(f"unknown gateway option {word!r}")
        if settings.get("VOXGATE_AUTH") == "jwt":
            settings.setdefault("VOXGATE_JWT_SECRET", secrets.token_urlsafe(48))
        env = clean_env(
            HOME=str(workdir),
            VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'voxgate.db'}",
            VOXGATE_SHUTDOWN_DEADLINE_S="3",
            **settings,
        )
        server = start_gateway(workdir, env)
        self.processes.append(server)
        token = None
        if "VOXGATE_JWT_SECRET" in settings:
            claims = {"sub": "docs-reader", "exp": int(time.time()) + 3600}
            token = jwt.encode(claims, settings["VOXGATE_JWT_SECRET"], algorithm="HS256")
        return Gateway(server, settings, token)

    def _openai_simulator(self, workdir: Path) -> dict[str, str]:
        from tests.support.browser import _spawn

        sim = _spawn("openai-sim", [VOXGATE, "simulate", "openai", "--port", "0", "--key", "sk-test"],
                     clean_env(), workdir)  # fmt: skip
        self.processes.append(sim)
        port = sim.wait_for_line(r"simulator on ws://127\.0\.0\.1:(\d+)/v1/realtime").group(1)
        return {
            "OPENAI_API_KEY": "sk-test",
            "VOXGATE_OPENAI_URL": f"ws://127.0.0.1:{port}/v1/realtime",
            "VOXGATE_OPENAI_API_BASE": f"http://127.0.0.1:{port}/v1",
        }

    def browser(self):  # noqa: ANN201 (a Playwright Browser)
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            mic = self.workdir / "mic.wav"
            raw = self.workdir / "spoken.wav"
            subprocess.run(["espeak-ng", "-w", str(raw), "--", "hello can you hear me"], check=True, timeout=60)
            subprocess.run(["sox", str(raw), "-r", "44100", "-c", "1", "-b", "16", str(mic), "pad", "0.3", "2"],
                           check=True, timeout=60)  # fmt: skip
            self._playwright = self._stack.enter_context(sync_playwright())
            self._browser = launch_chromium(self._playwright, mic)  # type: ignore[arg-type]
        return self._browser

    def close(self) -> None:
        if self._browser is not None:
            with contextlib.suppress(Exception):
                self._browser.close()  # type: ignore[attr-defined]
        self._stack.close()
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    resources = Shared(tmp_path_factory.mktemp("docs-shared"))
    needed = {tuple(sorted(b.run[1:])) for page in pages() for b in parse(page) if b.run[:1] == ["gateway"]}
    try:
        with ThreadPoolExecutor(len(needed) or 1) as pool:  # they start side by side
            list(pool.map(lambda words: resources.gateway(list(words)), sorted(needed)))
        yield resources
    finally:
        resources.close()


# --------------------------------------------------------------------------------------------
# One page, run top to bottom
# --------------------------------------------------------------------------------------------


class PageRun:
    def __init__(self, page: str, sandbox: Path, shared: Shared, request: pytest.FixtureRequest) -> None:
        self.page, self.sandbox, self.shared, self.request = page, sandbox, shared, request
        self.ports = {port: free_port() for port in DOC_PORTS}
        self.background: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.output = ""  # what the last block printed
        self.last: Block | None = None
        self.last_gateway: Gateway | None = None  # the gateway it ran against, if any
        self.typescript_blocks: list[Block] = []
        self.env = clean_env(
            HOME=str(sandbox),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            VOXGATE_PORT=str(self.ports[8000]),
            VOXGATE_URL=f"ws://127.0.0.1:{self.ports[8000]}/ws",
            VOXGATE_SHUTDOWN_DEADLINE_S="3",
        )
        # A fresh terminal: no data directories of this machine's user, no enclosing make.
        for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
            self.env.pop(name, None)
        self._checkout()

    def _checkout(self) -> None:
        """What `make run` needs of a checkout, with `.venv` this environment's (set up)."""
        for name in ("Makefile", "pyproject.toml", "scripts/setup.sh", "clients/package-lock.json"):
            (self.sandbox / name).parent.mkdir(parents=True, exist_ok=True)
            (self.sandbox / name).symlink_to(ROOT / name)
        (self.sandbox / ".venv" / "bin").mkdir(parents=True)
        (self.sandbox / ".venv" / "bin" / "voxgate").symlink_to(VOXGATE)
        (self.sandbox / ".venv" / ".installed").touch()

    def rewrite(self, text: str, gateway: Gateway | None = None) -> str:
        for port, mapped in self.ports.items():
            if port == 8000 and gateway is not None:
                mapped = gateway.port
            text = re.sub(rf"(127\.0\.0\.1|localhost):{port}\b", rf"\g<1>:{mapped}", text)
            text = re.sub(rf"--port {port}\b", f"--port {mapped}", text)
        if gateway is not None:
            text = text.replace("wss://voice.example.com", f"ws://127.0.0.1:{gateway.port}")
            text = text.replace("https://voice.example.com", f"http://127.0.0.1:{gateway.port}")
        return text

    # --- the blocks --------------------------------------------------------------------------

    def run(self, block: Block) -> None:
        if (path := block.directive("file")) is not None:
            self.check_file(block, path)
        if block.not_run is not None or block.lang in ("nginx", "caddyfile", "ini"):
            return
        if block.lang == "text":
            if block.expected_output:
                self.check_output(block)
            return
        handler = {
            "sh": self.shell, "bash": self.shell, "python": self.python, "json": self.json,
            "dotenv": self.dotenv, "html": self.browser, "js": self.browser,
            "ts": self.typescript, "tsx": self.typescript,
        }[block.lang]  # fmt: skip
        self.last_gateway = None
        handler(block)
        self.last = block

    def check_file(self, block: Block, path: str) -> None:
        shipped = ROOT / path
        assert block.body == shipped.read_text(), f"{block} differs from {path}"
        if path.endswith(".service"):
            self.systemd_verify(block, shipped)
        else:
            runner = (ROOT / "tests" / "e2e" / "test_deployment_nginx.py").read_text()
            assert f'"{shipped.name}"' in runner, f"{path} is run by no test"

    def systemd_verify(self, block: Block, unit: Path) -> None:
        """`systemd-analyze verify` with the ExecStart program pointed at one that exists."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.fail("systemd-analyze is missing (Debian's systemd package)")
        text = unit.read_text()
        program = re.search(r"^ExecStart=(\S+)", text, re.M)
        assert program is not None, f"{block}: no ExecStart"
        copy = self.sandbox / unit.name
        copy.write_text(text.replace(program.group(1), VOXGATE))
        result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{block}: systemd-analyze verify: {result.stderr}"

    def check_output(self, block: Block) -> None:
        """Wait (the output of a server or a page grows) until the expected lines are there."""
        assert self.last is not None, f"{block}: no block before it ran"
        # The addresses in it are the ones the block ran with.
        expected = [self.rewrite(line, self.last_gateway) for line in expected_lines(block)]
        # A finished command's output is whole; a server's log or a page's console still grows.
        deadline = time.monotonic() + (OUTPUT_TIMEOUT_S if callable(self.output) else 0)
        while (missing := missing_output(expected, self.current_output())) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not missing, f"{block}: {self.last} did not print {missing}; it printed:\n{self.current_output()}"

    def current_output(self) -> str:
        if callable(self.output):
            return str(self.output())
        return self.output

    # --- shell and python ---------------------------------------------------------------------

    def shell(self, block: Block) -> None:
        run = block.run
        if run and run[0] == "background":
            self.start_background(block, self.rewrite(run[1]))
            return
        env = dict(self.env)
        gateway = self.shared.gateway(run[1:]) if run[:1] == ["gateway"] else None
        if gateway is not None:
            env.update(gateway.env, VOXGATE_URL=f"ws://127.0.0.1:{gateway.port}/ws")
            self.last_gateway = gateway
        if run[:1] == ["postgres"]:
            env.update(self.postgres())
        script = "set -eo pipefail\n" + self.rewrite(block.body, gateway)
        self.foreground(block, ["bash", "-c", script], env)

    def python(self, block: Block) -> None:
        env = dict(self.env)
        gateway = self.shared.gateway(block.run[1:]) if block.run[:1] == ["gateway"] else None
        if gateway is not None:
            env.update(gateway.env, VOXGATE_URL=f"ws://127.0.0.1:{gateway.port}/ws")
            self.last_gateway = gateway
        script = self.sandbox / f"block_{block.line}.py"
        script.write_text(self.rewrite(block.body, gateway))
        self.foreground(block, [sys.executable, str(script)], env)

    def foreground(self, block: Block, command: list[str], env: dict[str, str]) -> None:
        proc = subprocess.Popen(command, cwd=self.sandbox, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            stop(proc)  # with whatever it started
            raise AssertionError(f"{block} did not finish within 120 s") from None
        self.output = out + err
        assert proc.returncode == 0, f"{block} exited {proc.returncode}:\n{self.output}"

    def start_background(self, block: Block, ready_url: str) -> None:
        if (previous := self.background.pop(ready_url, None)) is not None:
            stop(previous)  # the reader's Ctrl-C in that terminal
        log = self.sandbox / f"block_{block.line}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", self.rewrite(block.body)], cwd=self.sandbox, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.background[ready_url] = proc
        self.output = lambda: log.read_text(errors="replace")  # type: ignore[assignment]
        deadline = time.monotonic() + 150  # serve loads the offline models first
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2.0).status_code < 500:
                    return
            assert proc.poll() is None, f"{block} exited {proc.returncode}:\n{log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"{block}: {ready_url} never answered:\n{log.read_text()}"
            time.sleep(0.1)

    def postgres(self) -> dict[str, str]:
        import asyncio

        server = self.request.getfixturevalue("pg_server")

        async def create() -> None:
            import asyncpg

            conn = await asyncpg.connect(host="127.0.0.1", port=server.port, user=server.user, database="postgres")
            try:
                await conn.execute('DROP DATABASE IF EXISTS "voxgate" WITH (FORCE)')
                await conn.execute('CREATE DATABASE "voxgate"')
            finally:
                await conn.close()

        # In a thread of its own: Playwright's sync API may hold an event loop in this one.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, create()).result(60)
        self.request.addfinalizer(lambda: _in_thread(server.drop_database("voxgate")))
        url = server.url("voxgate")
        migrated = subprocess.run([VOXGATE, "db", "upgrade"], env={**self.env, "VOXGATE_DATABASE_URL": url},
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr
        return {"PGHOST": "127.0.0.1", "PGPORT": str(server.port), "PGUSER": server.user}

    # --- data ---------------------------------------------------------------------------------

    def json(self, block: Block) -> None:
        value = json.loads(block.body)
        self.output = ""
        if isinstance(value, dict) and value.get("type") in P.CLIENT_TYPES:
            P.parse_client_text(block.body)  # raises on anything the gateway would refuse

    def dotenv(self, block: Block) -> None:
        path = self.sandbox / f"block_{block.line}.env"
        path.write_text(block.body)
        names = {f.validation_alias.choices[0] for f in Settings.model_fields.values()}  # type: ignore[union-attr]
        keys = [line.split("=", 1)[0] for line in block.body.splitlines() if line.strip() and not line.startswith("#")]
        assert set(keys) <= names, f"{block}: not settings: {set(keys) - names}"
        Settings(_env_file=str(path))  # type: ignore[call-arg]
        self.output = ""

    # --- browser and TypeScript ---------------------------------------------------------------

    def browser(self, block: Block) -> None:
        gateway = self.last_gateway = self.shared.gateway(block.run[1:])
        session_token = None
        if gateway.jwt is not None:
            answer = httpx.post(f"{gateway.server.url}/api/realtime/session",
                                headers={"Authorization": f"Bearer {gateway.jwt}"}, timeout=10)  # fmt: skip
            session_token = answer.json()["token"]
        # What your backend hands the page: a user's JWT, a single-use session token.
        prelude = f"<script>const jwt = {json.dumps(gateway.jwt)}; const voxgateToken = {json.dumps(session_token)};</script>\n"
        body = self.rewrite(block.body, gateway)
        html = prelude + (body if block.lang == "html" else f'<script type="module">\n{body}</script>\n')
        context = self.shared.browser().new_context()
        self.request.addfinalizer(context.close)
        page = context.new_page()
        console: list[str] = []
        errors: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # A page of the gateway's own origin, loaded from the network (Chromium's local network
        # access checks treat a document Playwright makes up as public), then the example in it.
        page.goto(f"{gateway.server.url}/health")
        page.set_content(html)

        def output() -> str:
            page.wait_for_timeout(50)  # Playwright delivers console events while it is called
            assert not errors, f"{block} raised in the page: {errors}"
            return "\n".join(console)

        self.output = output  # type: ignore[assignment]

    def typescript(self, block: Block) -> None:
        """Collected, and type-checked together when the page ends (one compiler run)."""
        self.typescript_blocks.append(block)
        self.output = ""

    def typecheck(self) -> None:
        from tests.support.node import CLIENTS, npm_ci

        if not self.typescript_blocks:
            return
        npm_ci(CLIENTS)
        folder = self.sandbox / "typescript"
        folder.mkdir()
        (folder / "node_modules").symlink_to(CLIENTS / "node_modules")
        files = {f"block_{b.line}.{b.lang}": b for b in self.typescript_blocks}
        for name, block in files.items():
            (folder / name).write_text(block.body)
        config = {
            "compilerOptions": {
                "strict": True, "noEmit": True, "skipLibCheck": True, "target": "ES2022",
                "module": "ESNext", "moduleResolution": "Bundler", "jsx": "react-jsx",
                "lib": ["ES2022", "DOM", "DOM.Iterable"], "types": ["node", "react"],
                "paths": {
                    "@voxgate/client": [str(CLIENTS / "web" / "src" / "index.ts")],
                    "@voxgate/react": [str(CLIENTS / "react" / "src" / "index.ts")],
                },
            },
            "files": sorted(files),
        }  # fmt: skip
        (folder / "tsconfig.json").write_text(json.dumps(config))
        tsc = CLIENTS / "node_modules" / "typescript" / "bin" / "tsc"
        result = subprocess.run(["node", str(tsc), "-p", str(folder)], capture_output=True, text=True, timeout=180)
        shown = ", ".join(str(b) for b in files.values())
        assert result.returncode == 0, f"{shown}: type errors (block_LINE is the block at LINE):\n{result.stdout}{result.stderr}"

    def close(self) -> None:
        for proc in self.background.values():
            stop(proc)


def _in_thread(coroutine: Any) -> None:
    import asyncio

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result(60)


def stop(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """The whole process group (make and the server it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def opening_commands(blocks: list[Block]) -> list[Block]:
    """The README opens with the two commands, unmarked (its first lines stay as they are):
    `make run` runs in the quick start below it, in the background as a server must; `make
    test` is this very suite. Any other opening is run like every block."""
    first = blocks[0]
    commands = [line.split("#")[0].strip() for line in first.body.splitlines() if line.strip()]
    if first.page != "README.md" or commands != ["make run", "make test"]:
        return blocks
    assert any(b.body.strip() == "make run" and b.run[:1] == ["background"] for b in blocks[1:]), (
        "the README's quick start no longer runs `make run`"
    )
    return blocks[1:]


@pytest.mark.parametrize("page", pages())
def test_page_examples_run_as_written(page: str, shared: Shared, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks = parse(page)
    assert not [p for b in blocks for p in problems(b)], "see test_every_block_is_run_or_says_why_not"
    blocks = opening_commands(blocks)
    run = PageRun(page, tmp_path, shared, request)
    try:
        for block in blocks:
            run.run(block)
        run.typecheck()
    finally:
        run.close()
