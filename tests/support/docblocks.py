"""The fenced code blocks of the README and docs/*.md, and what the docs test does with each.

A block is handled by its language, or by HTML comments on the lines right above its fence
(several may be stacked):

| marker | meaning |
|---|---|
| `<!-- not-run: REASON -->` | not run here; the reason is required and shown by the test |
| `<!-- run: background URL -->` | (sh) a server: started in the background, ready when `URL` answers; kept running until the page ends or another block becomes ready at the same `URL` (a reader's Ctrl-C and restart in that terminal) |
| `<!-- run: gateway [NAME=VALUE ...] [openai-simulator] -->` | needs a running `voxgate serve` with these settings (`openai-simulator`: the OpenAI simulator behind it); the block's `127.0.0.1:8000` is that gateway, and the block gets the gateway's environment (its JWT secret, say) |
| `<!-- run: postgres -->` | (sh) needs a PostgreSQL server with a database `voxgate` a gateway has migrated; `PGHOST`, `PGPORT`, `PGUSER` point at it |
| `<!-- file: PATH -->` | the block is the repository file `PATH`, byte for byte |
| `<!-- expected-output -->` | (a `text` block) lines the block before it must print, in order; `…` stands for any text |

By language, unless marked `not-run`:

| language | what the test does |
|---|---|
| `sh`, `bash` | runs the block with `bash -e` in the page's directory |
| `python` | runs it with this interpreter in the page's directory |
| `html`, `js` | loads it into a page on the gateway's origin in Chromium (needs `run: gateway` and an `expected-output`: what it logs to the console) |
| `ts`, `tsx` | type-checks it, strict, against the sources of `@voxgate/client` and `@voxgate/react` |
| `json` | parses it; a client message must pass the gateway's own parser |
| `dotenv` | loads it as a `.env` file into `Settings`; every name must be a setting |
| `nginx`, `caddyfile`, `ini` | must carry `file:` naming the shipped file; nginx and Caddy files are run by `tests/e2e/test_deployment_nginx.py`, the systemd unit is checked with `systemd-analyze verify` |
| `text` | a diagram or an output: not code |

Any other block fails the test: a new example cannot be added without being run, or saying
why it cannot be.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<text>.*?)\s*-->\s*$")
_DIRECTIVES = ("not-run", "run", "file", "expected-output")

RUNNABLE = {"sh", "bash", "python", "html", "js", "ts", "tsx", "json", "dotenv"}
FILE_LANGS = {"nginx", "caddyfile", "ini"}
NOT_CODE = {"text"}


@dataclass
class Block:
    page: str
    line: int
    lang: str
    body: str
    markers: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ```{self.lang}"

    def directive(self, name: str) -> str | None:
        """The value of a marker (`"" ` for a bare one such as `expected-output`), or None."""
        for marker in self.markers:
            key, _, value = marker.partition(":")
            if key.strip() == name:
                return value.strip()
        return None

    @property
    def not_run(self) -> str | None:
        return self.directive("not-run")

    @property
    def run(self) -> list[str]:
        value = self.directive("run")
        return value.split() if value else []

    @property
    def expected_output(self) -> bool:
        return self.directive("expected-output") is not None


def pages() -> list[str]:
    return ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]


def parse(page: str) -> list[Block]:
    lines = (ROOT / page).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, start = match.group("indent"), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = "\n".join(line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end])
        markers: list[str] = []
        j = start - 1
        while j >= 0 and (m := _MARKER.match(lines[j])):
            markers.insert(0, m.group("text"))
            j -= 1
        blocks.append(Block(page, start + 1, match.group("lang"), textwrap.dedent(body) + "\n", markers))
        i = end + 1
    return blocks


def problems(block: Block) -> list[str]:
    """Why the docs test could not handle this block (an empty list when it can)."""
    found: list[str] = []
    for marker in block.markers:
        key = marker.partition(":")[0].strip()
        if key not in _DIRECTIVES:
            found.append(f"{block}: unknown marker <!-- {marker} -->")
    if block.not_run is not None:
        if not block.not_run:
            found.append(f"{block}: not-run needs a reason")
        return found
    if not block.lang:
        found.append(f"{block}: a fence without a language")
    elif block.lang in FILE_LANGS:
        if block.directive("file") is None:
            found.append(f"{block}: a {block.lang} block must name the shipped file it is (file: PATH)")
    elif block.lang not in RUNNABLE | NOT_CODE:
        found.append(f"{block}: no way to run ```{block.lang} blocks; mark it not-run with the reason")
    if block.lang in ("html", "js") and "gateway" not in block.run:
        found.append(f"{block}: a browser example needs <!-- run: gateway ... -->")
    if block.run and block.run[0] not in ("background", "gateway", "postgres"):
        found.append(f"{block}: unknown run directive {block.run}")
    if block.expected_output and block.lang != "text":
        found.append(f"{block}: expected-output marks a text block")
    return found


def expected_lines(block: Block) -> list[str]:
    return [line.strip() for line in block.body.splitlines() if line.strip()]


def missing_output(expected: list[str], output: str) -> list[str]:
    """The expected lines not found in `output`, in order (`…` matches any text)."""
    lines = [line.strip() for line in output.splitlines()]
    position = 0
    for wanted in expected:
        pattern = re.compile(".*".join(re.escape(part) for part in wanted.split("…")))
        while position < len(lines) and not pattern.fullmatch(lines[position]):
            position += 1
        if position == len(lines):
            return expected[expected.index(wanted) :]
        position += 1
    return []


__all__ = ["Block", "expected_lines", "missing_output", "pages", "parse", "problems"]
