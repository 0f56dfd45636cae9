"""The web packages' own checks, run from pytest so `make test` runs them with the rest.

- The gateway serves `/voxgate.js` and its worklets from `src/voxgate/web/`, committed so a
  Python install needs no Node. They are BUILT from `clients/web/src`: a fresh build must give
  the same bytes, or someone edited one side only.
- The vitest unit tests (protocol state machine with a fake socket, the client, the React hook
  under strict mode and in server rendering).
- TypeScript type checks of both packages, worklets included.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.browser import REPO_ROOT
from tests.support.node import CLIENTS, npm_ci, packed_tarballs, run

SERVED = ("voxgate.js", "capture-worklet.js", "playback-worklet.js")
WEB = REPO_ROOT / "src" / "voxgate" / "web"


@pytest.fixture(scope="module")
def clients_installed() -> Path:
    npm_ci(CLIENTS)
    return CLIENTS


def test_served_client_is_a_fresh_build_of_the_package_source(
    clients_installed: Path, tmp_path: Path
) -> None:
    run(["node", "web/build.mjs", "--gateway-only", "--gateway-out", str(tmp_path)], cwd=CLIENTS)
    stale = [name for name in SERVED if (tmp_path / name).read_bytes() != (WEB / name).read_bytes()]
    assert not stale, (
        f"src/voxgate/web/{stale} differ from a fresh build of clients/web/src: "
        "run `npm run build` in clients/ and commit the result"
    )
    # The worklets are self-contained (a Blob-URL or asset-copied worklet cannot import).
    for name in SERVED[1:]:
        assert not re.search(r"^\s*import\s", (WEB / name).read_text(), re.M), name
    assert not (WEB / "resampler.js").exists(), "the resampler is bundled into each worklet now"


def test_vitest_unit_tests(clients_installed: Path) -> None:
    proc = run(
        ["npx", "--no-install", "vitest", "run", "--reporter=verbose"], cwd=CLIENTS, timeout=300
    )
    out = proc.stdout
    match = re.search(r"Tests\s+(\d+) passed \((\d+)\)", out)
    assert match and match.group(1) == match.group(2), out[-3000:]
    # The suites that matter are there (a rename must not silently drop them).
    for suite in ("connection.test.ts", "client.test.ts", "useVoxgate.test.tsx", "ssr.test.tsx"):
        assert suite in out, f"{suite} did not run:\n{out[-3000:]}"


def test_packages_typecheck(clients_installed: Path) -> None:
    tsc = ["npx", "--no-install", "tsc", "--noEmit", "-p"]
    run([*tsc, "web/tsconfig.json"], cwd=CLIENTS)
    run([*tsc, "web/tsconfig.worklets.json"], cwd=CLIENTS)
    # The hook is checked against the client's published types (dist), as a user gets them;
    # packing builds them (under the lock the example tests share).
    packed_tarballs()
    run([*tsc, "react/tsconfig.json"], cwd=CLIENTS)


def test_public_types_have_no_any(clients_installed: Path) -> None:
    """No `any` leaks to users from the published declarations (comments aside)."""
    packed_tarballs()
    leaks = []
    for dts in sorted(CLIENTS.glob("*/dist/*.d.ts")):
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", dts.read_text(), flags=re.S)
        leaks += [
            f"{dts.name}: {line.strip()}"
            for line in code.splitlines()
            if re.search(r"\bany\b", line)
        ]
    assert len(list(CLIENTS.glob("*/dist/index.d.ts"))) == 2
    assert not leaks, leaks
