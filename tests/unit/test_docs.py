"""The docs are part of the product: they must name every variable, code and message the code has."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from voxgate import protocol
from voxgate.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _env_names() -> list[str]:
    names = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names.append(alias.choices[0])  # type: ignore[union-attr]
    return names


def test_readme_starts_with_the_two_commands_and_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("# voxgate\n\n```sh\nmake run ")
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    # A short front door: the reference lives in docs/, each page linked from it.
    assert len(readme.splitlines()) < 200
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    assert "(CHANGELOG.md)" in readme
    steps = re.findall(r"^(\d)\. \*\*Terminal (\d)", readme[readme.index("## Quick start") :], re.M)
    assert [s for s, _ in steps] == ["1", "2", "3"], steps


def _config_rows() -> dict[str, list[str]]:
    """The rows of docs/configuration.md's tables: variable -> [type, default, range, example, meaning]."""
    rows: dict[str, list[str]] = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 6 and re.fullmatch(r"`[A-Z_]+`", cells[0]):
            assert cells[0][1:-1] not in rows, f"{cells[0]} is documented twice"
            rows[cells[0][1:-1]] = cells[1:]
    return rows


_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", SecretStr: "secret"}


def _documented_type(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "string"
    if args and typing.get_origin(annotation) not in (list, typing.Literal):
        return _documented_type(args[0])  # X | None
    return _TYPES[typing.get_origin(annotation) or annotation]


def _literal_default(cell: str) -> str | None:
    match = re.match(r"`([^`]*)`", cell)
    return match.group(1) if match else None


def test_configuration_page_documents_every_setting_with_its_type_default_and_range() -> None:
    """Every field of `Settings` has a row in docs/configuration.md whose type, default and
    range agree with the code (bounds and choices the code enforces must be in the range)."""
    rows = _config_rows()
    missing = [name for name in _env_names() if name not in rows]
    assert not missing, f"docs/configuration.md lacks: {missing}"
    wrong: list[str] = []
    for field in Settings.model_fields.values():
        name = field.validation_alias.choices[0]  # type: ignore[union-attr]
        kind, default, bounds, example, meaning = rows[name]
        if kind.split()[0] != _documented_type(field.annotation):
            wrong.append(f"{name}: type {kind!r}, the code has {field.annotation}")
        if not (example and meaning):
            wrong.append(f"{name}: no example or meaning")
        if field.default_factory is None:
            value = field.default
            shown = _literal_default(default)
            if value is None:
                ok = default.startswith("—")
            elif isinstance(value, bool):
                ok = shown == str(value).lower()
            elif isinstance(value, int | float):
                ok = shown is not None and float(shown) == float(value)
            else:
                ok = shown == str(value)
            if not ok:
                wrong.append(f"{name}: default {default!r}, the code has {value!r}")
        for meta in field.metadata:
            for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤")):
                bound = getattr(meta, attr, None)
                if bound is not None and f"{sign} {bound:g}" not in bounds:
                    wrong.append(f"{name}: range {bounds!r} lacks {sign} {bound:g}")
        if typing.get_origin(field.annotation) is typing.Literal:
            for choice in typing.get_args(field.annotation):
                if f"`{choice}`" not in bounds:
                    wrong.append(f"{name}: range {bounds!r} lacks `{choice}`")
    assert not wrong, "\n".join(wrong)
    # The CLI's own variables, too; and nothing documented that the code does not read.
    extra = set(rows) - set(_env_names()) - {"VOXGATE_URL", "VOXGATE_TOKEN"}
    assert {"VOXGATE_URL", "VOXGATE_TOKEN"} <= set(rows) and not extra, extra


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_protocol_doc_covers_every_message_and_code() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for code in protocol.ErrorCode:
        assert f"`{code.value}`" in doc, code
    for close in protocol.CloseCode:
        assert str(close.value) in doc, close
    for kind in sorted(protocol.CLIENT_TYPES | protocol.SERVER_TYPES):
        assert f"`{kind}`" in doc, kind
    assert "PROTOCOL_VERSION" in doc or "version 1" in doc


def test_browser_page_says_how_openai_browser_sdks_use_a_voxgate_token() -> None:
    """`@openai/agents-realtime` refuses non-`ek_` keys in a browser without a flag: a reader
    of the browser page must find the flag, and why setting it is safe here."""
    page = (ROOT / "docs" / "browser-client.md").read_text()
    browser = page.split("## OpenAI's browser SDKs through voxgate", 1)[1]
    assert "@openai/agents-realtime" in browser and "useInsecureApiKey: true" in browser
    assert "ek_" in browser and "/api/realtime/session" in browser


def test_protocol_doc_covers_the_compatible_surface_bounds() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for code in ("engine_not_enabled", "model_not_allowed", "instructions_too_long",
                 "too_many_tools", "expires_after_too_long", "missing_required_parameter"):  # fmt: skip
        assert f"`{code}`" in doc, code
    for name in ("VOXGATE_ALLOWED_MODELS", "VOXGATE_CLIENT_SECRET_MAX_TTL_S",
                 "VOXGATE_COMPAT_MAX_EVENT_BYTES", "VOXGATE_HEADER_TIMEOUT_S"):  # fmt: skip
        assert name in doc, name


def test_cli_page_names_every_command_and_option() -> None:
    """Each `voxgate` command, and each of its options, appears in docs/cli.md's table."""
    import typer.main

    from voxgate.cli import app

    page = (ROOT / "docs" / "cli.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `voxgate ")]
    missing: list[str] = []

    def walk(command: Any, path: list[str]) -> None:
        if hasattr(command, "commands"):  # a group (typer may bring its own click)
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
            return
        if path and path[0] == "bench":
            return  # benchmark options are documented in docs/benchmarks.md
        row = next((r for r in rows if f"`voxgate {' '.join(path)}" in r or
                    (len(path) > 1 and f"`voxgate {path[0]} " in r and path[-1] in r)), None)  # fmt: skip
        if row is None:
            missing.append(" ".join(path))
            return
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help" and opt not in row:
                    missing.append(f"{' '.join(path)} {opt}")

    walk(typer.main.get_command(app), [])
    assert not missing, f"docs/cli.md's command table lacks: {missing}"


def _interface_fields(source: str, name: str) -> list[str]:
    body = re.search(rf"export interface {name}\b[^{{]*\{{(.*?)\n\}}", source, re.S)
    assert body is not None, name
    return re.findall(r"^  (?:readonly )?(\w+)\??[:(]", body.group(1), re.M)


def test_browser_client_page_is_a_complete_reference() -> None:
    """Every public method, property, option and event of `VoxgateClient`, and everything
    `useVoxgate` returns, is named in docs/browser-client.md."""
    web = ROOT / "clients" / "web" / "src"
    client = (web / "client.ts").read_text()
    types = (web / "types.ts").read_text()
    react = (ROOT / "clients" / "react" / "src" / "index.ts").read_text()
    store = (ROOT / "clients" / "react" / "src" / "store.ts").read_text()
    cls = client[client.index("export class VoxgateClient") :]
    members = set(re.findall(r"^  (?:async )?(?:get |set )?([a-z]\w*)\(", cls, re.M))
    members |= set(re.findall(r"^  readonly ([a-z]\w*):", cls, re.M))
    members -= {"constructor"}
    union = re.search(r"export type VoxgateEvent =(.*?);", types, re.S)
    assert union is not None
    events = [
        re.search(rf"export interface {name} \{{\s*(?:/\*\*.*?\*/\s*)?type: \"(\w+)\"", types, re.S).group(1)  # type: ignore[union-attr]
        for name in re.findall(r"\| (\w+)", union.group(1))
    ]
    names = {
        "client": sorted(members),
        "client options": _interface_fields(types, "ClientOptions"),
        "start options": _interface_fields(types, "StartOptions"),
        "events": events,
        "hook": _interface_fields(react, "UseVoxgateResult") + _interface_fields(store, "VoxgateSnapshot"),
    }
    page = (ROOT / "docs" / "browser-client.md").read_text()
    missing = [f"{kind}: {n}" for kind, found in names.items() for n in found if f"`{n}`" not in page and f"`{n}(" not in page]
    assert not missing, f"docs/browser-client.md does not name: {missing}"
    assert len(events) > 10 and len(names["client"]) > 20  # the parsing found the surface


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_links_between_pages_resolve() -> None:
    """Every relative link in the README, the changelog and docs/ names a file that exists, and
    a heading in it when it has an anchor."""
    broken: list[str] = []
    for page in [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", file.read_text(), flags=re.S), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
