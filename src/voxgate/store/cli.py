"""`voxgate conversations ...` and `voxgate db ...`: the store from the command line.

Two typer sub-apps the main CLI mounts (`app.add_typer(conversations_app, name="conversations")`,
`app.add_typer(db_app, name="db")`). Both read `Settings()` (so `VOXGATE_DATABASE_URL` and `.env`
apply) and open the store, which also brings its schema up to date.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from voxgate.config import get_settings
from voxgate.store.base import ConversationRecord
from voxgate.store.sql import SqlConversationStore, upgrade_database

conversations_app = typer.Typer(
    help="List, show and export stored conversations.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)

T = TypeVar("T")


@db_app.callback()
def _db_group() -> None:
    """Database schema management."""
    # A callback keeps `db` a command group even with one subcommand, so `voxgate db upgrade`
    # (not `voxgate db`) is the verb, and new verbs can join without changing the interface.


class ExportFormat(StrEnum):
    json = "json"
    md = "md"


def _run(action: Callable[[SqlConversationStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = SqlConversationStore(get_settings().database_url)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _load(conversation_id: str) -> ConversationRecord:
    conv = _run(lambda store: store.get_conversation(conversation_id))
    if conv is None:
        typer.echo(f"No conversation with id {conversation_id!r}.", err=True)
        raise typer.Exit(1)
    return conv


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if hasattr(value, "strftime") else "-"


def _short(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def to_markdown(conv: ConversationRecord) -> str:
    """A readable transcript; an interrupted assistant turn shows what the listener heard."""
    lines = [
        f"# Conversation {conv.id}",
        "",
        f"- User: {conv.user_id}",
        f"- Engine: {conv.engine}",
        f"- Started: {_when(conv.started_at)}",
        f"- Ended: {_when(conv.ended_at) if conv.ended_at else 'not ended'}",
        f"- Turns: {len(conv.turns)}",
    ]
    if conv.metadata:
        lines.append(f"- Metadata: `{json.dumps(conv.metadata, ensure_ascii=False)}`")
    lines.append("")
    for turn in conv.turns:
        if turn.role == "tool":
            lines.extend([f"*Tool call:* `{_tool_line(turn.text)}`", ""])
            continue
        speaker = "User" if turn.role == "user" else "Assistant"
        lines.append(f"**{speaker}:** {turn.text}")
        if turn.interrupted:
            after = f" after {turn.audio_ms} ms" if turn.audio_ms is not None else ""
            heard = turn.heard_text if turn.heard_text is not None else ""
            lines.append(f'*(interrupted{after}; heard: "{heard}")*')
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _tool_line(text: str) -> str:
    """A stored tool call in one line: name(arguments) -> result (or how it failed)."""
    from voxgate.tools.record import summary

    try:
        record = json.loads(text)
    except ValueError:
        return text
    return summary(record) if isinstance(record, dict) else text


@conversations_app.command("list")
def list_command(
    user: Annotated[str | None, typer.Option(help="Only this user's conversations.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Page size.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Conversations to skip.")] = 0,
) -> None:
    """Stored conversations, newest first."""
    items, total = _run(lambda store: store.list_conversations(user, limit=limit, offset=offset))
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: never squeeze ids (80 columns by default)
    if not items:
        console.print(f"No conversations ({total} in total).")
        return
    table = Table(
        box=box.SIMPLE, title=f"Conversations {offset + 1}-{offset + len(items)} of {total}"
    )
    for column in ("id", "user", "engine", "started (UTC)", "ended (UTC)", "turns"):
        table.add_column(column, no_wrap=column in ("id", "started (UTC)", "ended (UTC)"))
    for c in items:
        table.add_row(
            c.id,
            c.user_id,
            c.engine,
            _short(c.started_at),
            _short(c.ended_at),
            str(c.turn_count),
        )
    console.print(table)


@conversations_app.command("show")
def show_command(conversation_id: Annotated[str, typer.Argument(help="Conversation id.")]) -> None:
    """One conversation's transcript."""
    typer.echo(to_markdown(_load(conversation_id)), nl=False)


@conversations_app.command("export")
def export_command(
    conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
    format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="json or md.")
    ] = ExportFormat.json,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")
    ] = None,
) -> None:
    """A conversation with its turns as JSON (the API's shape) or a Markdown transcript."""
    conv = _load(conversation_id)
    if format is ExportFormat.json:
        body = json.dumps(conv.to_json(with_turns=True), indent=2, ensure_ascii=False) + "\n"
    else:
        body = to_markdown(conv)
    if output is None:
        typer.echo(body, nl=False)
    else:
        output.write_text(body, encoding="utf-8")
        typer.echo(f"Wrote {output}", err=True)


@db_app.command("upgrade")
def upgrade_command() -> None:
    """Apply schema migrations (the server also does this when it starts)."""
    url, revision = asyncio.run(upgrade_database(get_settings().database_url))
    typer.echo(f"Database {url} is at schema revision {revision} (head).")
