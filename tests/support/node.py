"""Node side of the suite: install from lock files, build and pack the web packages, run examples.

- `npm ci` runs only when a folder's lock file (or, for the examples, the packed tarballs they
  install) changed since the last install: a stamp in `node_modules/` records what was
  installed. The suite stays fast on a second run and still installs from scratch on a fresh
  machine.
- Several xdist workers may need the same folder at once: a file lock per folder serialises
  them, and the second one finds the stamp up to date.
- Packaging builds with `--no-gateway`: the tests never rewrite the committed
  `src/voxgate/web/` files, so the staleness test compares them with a fresh build honestly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import REPO_ROOT

CLIENTS = REPO_ROOT / "clients"
EXAMPLES = REPO_ROOT / "examples"
PACKS = CLIENTS / "packs"
LOCKS = REPO_ROOT / "build" / "node-locks"
PACKAGES = ("web", "react")


def node_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        NEXT_TELEMETRY_DISABLED="1",
        npm_config_audit="false",
        npm_config_fund="false",
        npm_config_update_notifier="false",
        CI="1",  # no interactive prompts, no spinners in logs
        NO_COLOR="1",
        FORCE_COLOR="0",
        **extra,
    )
    return env


def require_node() -> None:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/setup.sh (it installs Node.js)")


def run(
    command: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, fail with its output (the useful part of a build error)."""
    proc = subprocess.run(
        command,
        cwd=cwd,
        env=env or node_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} (in {cwd}) exited {proc.returncode}:\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@contextlib.contextmanager
def folder_lock(name: str) -> Iterator[None]:
    LOCKS.mkdir(parents=True, exist_ok=True)
    with (LOCKS / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _digest(paths: list[Path]) -> str:
    """`sha256sum PATHS | sha256sum` run from the repository root: scripts/setup.sh writes the
    same stamp for clients/, so `make test` after setup does not install twice."""
    listing = "".join(
        f"{hashlib.sha256(p.read_bytes() if p.is_file() else b'').hexdigest()}  {p.relative_to(REPO_ROOT)}\n"
        for p in paths
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def npm_ci(folder: Path, extra_inputs: list[Path] | None = None) -> None:
    """`npm ci` in `folder` unless its lock file (and `extra_inputs`) are what is installed."""
    require_node()
    stamp = folder / "node_modules" / ".voxgate-ci-stamp"
    digest = _digest([folder / "package-lock.json", folder / "package.json", *(extra_inputs or [])])
    with folder_lock(f"ci-{folder.name}"):
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return
        run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder)
        stamp.write_text(digest)


def _package_sources() -> list[Path]:
    files: list[Path] = [CLIENTS / "package-lock.json"]
    for name in PACKAGES:
        root = CLIENTS / name
        files += [root / "package.json", root / "build.mjs", root / "tsconfig.json"]
        files += sorted(p for p in (root / "src").rglob("*") if p.is_file())
    return files


def packed_tarballs() -> list[Path]:
    """Build both packages and `npm pack` them into clients/packs/ (once per source state)."""
    npm_ci(CLIENTS)
    stamp = PACKS / ".voxgate-pack-stamp"
    with folder_lock("pack"):
        digest = _digest(_package_sources())
        tarballs = [PACKS / "voxgate-client-0.1.0.tgz", PACKS / "voxgate-react-0.1.0.tgz"]
        if stamp.is_file() and stamp.read_text() == digest and all(t.is_file() for t in tarballs):
            return tarballs
        run(["node", "web/build.mjs", "--no-gateway"], cwd=CLIENTS)
        run(["node", "react/build.mjs"], cwd=CLIENTS)
        PACKS.mkdir(exist_ok=True)
        run(["npm", "run", "pack"], cwd=CLIENTS)
        missing = [t for t in tarballs if not t.is_file()]
        assert not missing, f"npm pack did not produce {missing}"
        stamp.write_text(digest)
        return tarballs


def install_example(name: str) -> Path:
    """The example folder with its dependencies installed by `npm ci`, the voxgate packages
    from the freshly packed tarballs (its package.json names them by `file:` path)."""
    tarballs = packed_tarballs()
    folder = EXAMPLES / name
    npm_ci(folder, extra_inputs=tarballs)
    installed = folder / "node_modules" / "@voxgate" / "client" / "package.json"
    assert installed.is_file() and not installed.parent.is_symlink(), (
        "the example must install @voxgate/client from the tarball, not link the source"
    )
    return folder
