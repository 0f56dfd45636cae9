"""The docs are part of the product: they must name every variable, code and message the code has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from voxgate import protocol
from voxgate.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _env_names() -> list[str]:
    names = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names.append(alias.choices[0])  # type: ignore[union-attr]
    return names


def test_readme_starts_with_the_two_commands_and_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    missing = [name for name in _env_names() if f"`{name}`" not in readme]
    assert not missing, f"README configuration table lacks: {missing}"


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


def test_browser_section_says_how_openai_browser_sdks_use_a_voxgate_token() -> None:
    """`@openai/agents-realtime` refuses non-`ek_` keys in a browser without a flag: a reader
    of the browser section must find the flag, and why setting it is safe here."""
    readme = (ROOT / "README.md").read_text()
    browser = readme.split("## The browser client", 1)[1].split("\n## ", 1)[0]
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


def test_readme_command_table_names_every_cli_command_and_option() -> None:
    """Each `voxgate` command, and each of its options, appears in the README's table."""
    import typer.main

    from voxgate.cli import app

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Command line") :]
    section = section[: section.index("\n## ", 5)]
    rows = [line for line in section.splitlines() if line.startswith("| `voxgate ")]
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
    assert not missing, f"README command table lacks: {missing}"
