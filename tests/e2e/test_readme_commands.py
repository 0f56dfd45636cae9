"""The README's quick-start CLI block, run line by line as written, in a fresh directory with
`.venv/bin/voxgate` pointing at this environment's command. The only thing the test adds is
the address of its own gateway (`VOXGATE_URL`, which `voxgate talk` reads), since port 8000
may be taken on a shared machine."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.support.procs import VOXGATE, clean_env, free_port, voxgate_processes, wait_http

ROOT = Path(__file__).resolve().parents[2]


def quick_start_cli_block() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start") :]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    block = next(b for b in blocks if "voxgate talk" in b)
    return [line.strip() for line in block.splitlines() if line.strip()]  # indented in a list


def test_quick_start_cli_commands_run_as_written(tmp_path: Path) -> None:
    lines = quick_start_cli_block()
    assert lines[0].startswith("espeak-ng -w hello.wav")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "voxgate").symlink_to(VOXGATE)
    port = free_port()
    env = clean_env(
        VOXGATE_PORT=str(port),
        VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'readme.db'}",
    )
    with voxgate_processes(["serve"], env=env):
        wait_http(f"http://127.0.0.1:{port}/health")
        talk_env = {**env, "VOXGATE_URL": f"ws://127.0.0.1:{port}/ws"}
        outputs = []
        for line in lines:
            result = subprocess.run(shlex.split(line), cwd=tmp_path, env=talk_env,
                                    capture_output=True, text=True, timeout=120)  # fmt: skip
            assert result.returncode == 0, (line, result.stdout, result.stderr)
            outputs.append(result.stdout)
    assert (tmp_path / "hello.wav").stat().st_size > 10_000
    assert (tmp_path / "reply.wav").stat().st_size > 10_000
    assert "you:" in outputs[1] and "assistant:" in outputs[1]
    assert "assistant:" in outputs[2] and "what time is it" in outputs[2]
