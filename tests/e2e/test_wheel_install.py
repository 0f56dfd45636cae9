"""`pip install voxgate` without the repository: build the wheel, install it into a fresh
virtual environment, and run `voxgate serve` + `voxgate talk` from a directory far from the
source tree. The web client, the migrations and the simulators must come from the wheel.

The fresh environment borrows voxgate's dependencies from the project's own environment (a
`.pth` line after its own site-packages) instead of downloading them, so the test runs offline;
voxgate itself is only the wheel's copy, which the test checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import httpx

from tests.support.procs import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(tmp: Path) -> Path:
    source = tmp / "source"  # a copy: building in place would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info"))  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(source)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("voxgate-*.whl")
    return wheel


def fresh_env(tmp: Path, wheel: Path) -> Path:
    target = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    py = target / "bin" / "python"
    site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    # Dependencies only: appended after the fresh site-packages, so voxgate resolves to the wheel.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (target / "bin" / "voxgate").write_text(
        f"#!{py}\nimport sys\nfrom voxgate.cli import main\nsys.exit(main())\n"
    )
    (target / "bin" / "voxgate").chmod(0o755)
    return target


def run_env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "XDG_DATA_HOME") and not k.startswith(("VOXGATE_", "OPENAI_", "ELEVENLABS_"))}  # fmt: skip
    env.update(HOME=str(tmp / "home"), **settings)
    return env


def test_wheel_installs_and_serves_without_the_repository(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    target = fresh_env(tmp_path, wheel)
    voxgate = str(target / "bin" / "voxgate")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = run_env(tmp_path)
    where = subprocess.check_output(
        [target / "bin" / "python", "-c", "import voxgate; print(voxgate.__file__)"],
        cwd=workdir, env=env, text=True,
    )  # fmt: skip
    assert where.startswith(str(target)), where  # the wheel's copy, not the checkout's
    version = subprocess.run([voxgate, "version"], cwd=workdir, env=env, capture_output=True, text=True)
    assert version.returncode == 0 and "0.1.0" in version.stdout

    gw_port, llm_port = free_port(), free_port()
    env = run_env(tmp_path, VOXGATE_PORT=str(gw_port), VOXGATE_LLM_URL=f"http://127.0.0.1:{llm_port}/v1")
    procs = [
        subprocess.Popen([voxgate, "simulate", "llm", "--port", str(llm_port), "--reply", "Packaged and working."],
                         cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([voxgate, "serve"], cwd=workdir, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
    ]  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{llm_port}/v1/models")
        wait_http(f"http://127.0.0.1:{gw_port}/health")
        page = httpx.get(f"http://127.0.0.1:{gw_port}/")
        assert page.status_code == 200 and "app.js" in page.text
        assert httpx.get(f"http://127.0.0.1:{gw_port}/voxgate.js").status_code == 200
        talk = subprocess.run(
            [voxgate, "talk", "--url", f"ws://127.0.0.1:{gw_port}/ws", "--text", "are you there"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert talk.returncode == 0, talk.stdout + talk.stderr
        assert "assistant: Packaged and working." in talk.stdout
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
    # The conversation is in the per-user data directory, which serve named on its first lines,
    # and `voxgate conversations list` finds it from any other directory.
    store = tmp_path / "home" / ".local" / "share" / "voxgate" / "voxgate.db"
    assert store.is_file()
    assert procs[1].stdout is not None
    assert f"conversations stored in sqlite+aiosqlite:///{store}" in procs[1].stdout.read().decode()
    listed = subprocess.run([voxgate, "conversations", "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "Conversations 1-1 of 1" in listed.stdout and "cascade" in listed.stdout, listed.stdout
    assert not (tmp_path / "voxgate.db").exists() and not (workdir / "voxgate.db").exists()


def test_a_missing_system_tool_is_a_clear_message(tmp_path: Path) -> None:
    """Without espeak-ng the cascade on espeak-ng says so (health and session), and nothing
    crashes. (The default voice is Piper's; espeak-ng is its fallback and an explicit choice.)"""
    target = fresh_env(tmp_path, build_wheel(tmp_path))
    voxgate = str(target / "bin" / "voxgate")
    port = free_port()
    env = run_env(tmp_path, VOXGATE_PORT=str(port), VOXGATE_TTS="espeak",
                  VOXGATE_ESPEAK_BIN="/nonexistent/espeak-ng")  # fmt: skip
    (tmp_path / "voxgate.db").write_bytes(b"")  # what an older voxgate left in its directory
    server = subprocess.Popen([voxgate, "serve"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert health["engines"]["cascade"]["available"] is False
        talk = subprocess.run(
            [voxgate, "talk", "--url", f"ws://127.0.0.1:{port}/ws", "--text", "hello"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert talk.returncode == 1
        assert "engine_unavailable" in talk.stderr and "espeak-ng" in talk.stderr, talk.stderr
        assert "Traceback" not in talk.stdout + talk.stderr
    finally:
        server.terminate()
        output = server.communicate(timeout=15)[0].decode()
    assert "espeak-ng" in output  # serve's first lines say why the engine cannot work
    # ... and where an older version's store went, so an upgrade does not look like data loss.
    assert "found ./voxgate.db, the store of an older voxgate" in " ".join(output.split())
    assert "Traceback" not in output
