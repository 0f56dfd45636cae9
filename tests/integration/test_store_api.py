"""The conversations REST API and the `conversations` / `db` CLI, on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from voxgate.config import get_settings
from voxgate.gateway.app import create_app
from voxgate.store.base import TurnRecord
from voxgate.store.cli import conversations_app, db_app
from voxgate.store.sql import SqlConversationStore, head_revision

SECRET = "test-secret-0123456789-abcdefghijklmnop"


async def _make_app(
    tmp_path: Path, auth: str, audio_dir: Path | None = None
) -> tuple[FastAPI, SqlConversationStore]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    store = SqlConversationStore(url)
    await store.open()
    # The real app wiring: what `voxgate serve` runs, audio log included.
    settings = get_settings(
        auth=auth, jwt_secret=SECRET, database_url=url,
        audio_log_dir=str(audio_dir) if audio_dir else None,
    )  # fmt: skip
    return create_app(settings, store=store), store


@pytest.fixture
async def open_app(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, SqlConversationStore]]:
    app, store = await _make_app(tmp_path, "none", tmp_path / "audio")
    try:
        yield app, store
    finally:
        await store.close()


@pytest.fixture
async def jwt_app(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, SqlConversationStore]]:
    app, store = await _make_app(tmp_path, "jwt")
    try:
        yield app, store
    finally:
        await store.close()


def _client(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers, timeout=30
    )


async def test_list_paging_filter_and_validation(
    open_app: tuple[FastAPI, SqlConversationStore],
) -> None:
    app, store = open_app
    ids = [
        (await store.create_conversation("alice" if i < 3 else "bob", "cascade", {"i": i})).id
        for i in range(5)
    ]
    async with _client(app) as client:
        first = (await client.get("/api/conversations", params={"limit": 2})).json()
        assert (first["total"], first["limit"], first["offset"]) == (5, 2, 0)
        assert [c["id"] for c in first["items"]] == [ids[4], ids[3]]
        item = first["items"][0]
        assert set(item) == {
            "id",
            "userId",
            "engine",
            "startedAt",
            "endedAt",
            "metadata",
            "turnCount",
        }
        assert (
            item["userId"],
            item["engine"],
            item["metadata"],
            item["turnCount"],
            item["endedAt"],
        ) == ("bob", "cascade", {"i": 4}, 0, None)
        assert item["startedAt"].endswith("+00:00")
        last = (await client.get("/api/conversations", params={"limit": 2, "offset": 4})).json()
        assert [c["id"] for c in last["items"]] == [ids[0]]
        beyond = (await client.get("/api/conversations", params={"offset": 50})).json()
        assert beyond["items"] == [] and beyond["total"] == 5
        # Auth off: every caller sees everything, and may narrow to one user.
        bobs = (await client.get("/api/conversations", params={"user": "bob"})).json()
        assert bobs["total"] == 2 and {c["userId"] for c in bobs["items"]} == {"bob"}
        for bad in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"limit": "many"}):
            r = await client.get("/api/conversations", params=bad)
            assert r.status_code == 422, bad
        ok = await client.get("/api/conversations", params={"limit": 200})
        assert ok.status_code == 200 and ok.json()["total"] == 5


async def test_get_with_turns_and_delete(
    open_app: tuple[FastAPI, SqlConversationStore], tmp_path: Path
) -> None:
    app, store = open_app
    conv = await store.create_conversation("anyone", "openai", {"topic": "time"})
    await store.add_turn(
        conv.id, TurnRecord(role="user", text="what time is it", item_id="u1", audio_ms=1500)
    )
    a = await store.add_turn(
        conv.id, TurnRecord(role="assistant", text="It is three o'clock.", item_id="a1")
    )
    await store.mark_interrupted(a.id or 0, "It is", 400)
    await store.end_conversation(conv.id)
    wav = app.state.audio_log.write(conv.id, 0, "user", b"\x00\x01" * 800, 16000)
    async with _client(app) as client:
        r = await client.get(f"/api/conversations/{conv.id}")
        assert r.status_code == 200
        body = r.json()
        assert body["id"] == conv.id and body["turnCount"] == 2 and body["endedAt"] is not None
        assert body["turns"][0] == {
            "role": "user",
            "text": "what time is it",
            "itemId": "u1",
            "startedAt": None,
            "endedAt": body["turns"][0]["endedAt"],
            "interrupted": False,
            "heardText": None,
            "audioMs": 1500,
        }
        assert {
            k: body["turns"][1][k] for k in ("role", "interrupted", "heardText", "audioMs")
        } == {"role": "assistant", "interrupted": True, "heardText": "It is", "audioMs": 400}
        assert (await client.get("/api/conversations/nope")).status_code == 404
        assert (await client.delete(f"/api/conversations/{conv.id}")).status_code == 204
        assert not wav.exists()
        assert (await client.get(f"/api/conversations/{conv.id}")).status_code == 404
        assert (await client.delete(f"/api/conversations/{conv.id}")).status_code == 404
    assert await store.get_conversation(conv.id) is None


async def test_jwt_callers_see_only_their_own(
    jwt_app: tuple[FastAPI, SqlConversationStore],
) -> None:
    app, store = jwt_app
    auth = app.state.authenticator
    alice_ids = [(await store.create_conversation("alice", "cascade")).id for _ in range(3)]
    bob_id = (await store.create_conversation("bob", "cascade")).id
    await store.add_turn(bob_id, TurnRecord(role="user", text="bob's secret"))

    async with _client(app) as anon:
        r = await anon.get("/api/conversations")
        assert r.status_code == 401 and "authentication required" in r.json()["detail"]
    async with _client(app, "not-a-jwt") as forged:
        assert (await forged.get("/api/conversations")).status_code == 401

    async with _client(app, auth.mint_jwt("alice")) as alice:
        mine = (await alice.get("/api/conversations", params={"limit": 2})).json()
        assert mine["total"] == 3 and len(mine["items"]) == 2
        rest = (await alice.get("/api/conversations", params={"limit": 2, "offset": 2})).json()
        assert {c["id"] for c in mine["items"] + rest["items"]} == set(alice_ids)
        assert (await alice.get("/api/conversations", params={"user": "alice"})).status_code == 200
        assert (await alice.get("/api/conversations", params={"user": "bob"})).status_code == 403
        # Someone else's conversation looks exactly like a missing one.
        theirs = await alice.get(f"/api/conversations/{bob_id}")
        missing = await alice.get(f"/api/conversations/{'0' * 32}")
        assert theirs.status_code == missing.status_code == 404
        assert "bob's secret" not in theirs.text
        assert (await alice.delete(f"/api/conversations/{bob_id}")).status_code == 404
        assert (await alice.get(f"/api/conversations/{alice_ids[0]}")).status_code == 200
    assert await store.get_conversation(bob_id) is not None

    async with _client(app, auth.mint_jwt("root", admin=True)) as admin:
        everything = (await admin.get("/api/conversations")).json()
        assert everything["total"] == 4
        bobs = (await admin.get("/api/conversations", params={"user": "bob"})).json()
        assert [c["id"] for c in bobs["items"]] == [bob_id]
        detail = (await admin.get(f"/api/conversations/{bob_id}")).json()
        assert detail["turns"][0]["text"] == "bob's secret"
        assert (await admin.delete(f"/api/conversations/{bob_id}")).status_code == 204
    assert await store.get_conversation(bob_id) is None


# --- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point `Settings()` at a fresh SQLite file (and away from any `.env` in the repo)."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli' / 'voxgate.db'}"
    monkeypatch.setenv("VOXGATE_DATABASE_URL", url)
    return url


def _seed(url: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        store = SqlConversationStore(url)
        await store.open()
        try:
            conv = await store.create_conversation("ivy", "cascade", {"room": "kitchen"})
            await store.add_turn(
                conv.id, TurnRecord(role="user", text="Set a timer for ten minutes.")
            )
            a = await store.add_turn(
                conv.id,
                TurnRecord(role="assistant", text="Timer set for ten minutes, starting now."),
            )
            await store.mark_interrupted(a.id or 0, "Timer set for", 700)
            await store.add_turn(conv.id, TurnRecord(role="user", text="Thanks!"))
            other = await store.create_conversation("jack", "openai")
            return {"id": conv.id, "other": other.id}
        finally:
            await store.close()

    return asyncio.run(main())


def test_cli_db_upgrade_list_show_export(cli_db: str, tmp_path: Path) -> None:
    runner = CliRunner()
    up = runner.invoke(db_app, ["upgrade"])
    assert up.exit_code == 0, up.output
    assert f"revision {head_revision()}" in up.output and (tmp_path / "cli" / "voxgate.db").exists()
    assert runner.invoke(db_app, ["upgrade"]).exit_code == 0  # idempotent

    ids = _seed(cli_db)
    listed = runner.invoke(conversations_app, ["list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert ids["id"] in listed.output and ids["other"] in listed.output and "of 2" in listed.output
    only_ivy = runner.invoke(conversations_app, ["list", "--user", "ivy"], env={"COLUMNS": "200"})
    assert ids["id"] in only_ivy.output and ids["other"] not in only_ivy.output

    shown = runner.invoke(conversations_app, ["show", ids["id"]])
    assert shown.exit_code == 0, shown.output
    assert "**User:** Set a timer for ten minutes." in shown.output

    exported = runner.invoke(conversations_app, ["export", ids["id"], "--format", "json"])
    assert exported.exit_code == 0, exported.output
    data = json.loads(exported.stdout)
    assert (
        data["id"] == ids["id"]
        and data["userId"] == "ivy"
        and data["metadata"] == {"room": "kitchen"}
    )
    assert [t["text"] for t in data["turns"]] == [
        "Set a timer for ten minutes.",
        "Timer set for ten minutes, starting now.",
        "Thanks!",
    ]
    assert (
        data["turns"][1]["heardText"] == "Timer set for" and data["turns"][1]["interrupted"] is True
    )

    md_path = tmp_path / "out.md"
    md = runner.invoke(
        conversations_app, ["export", ids["id"], "--format", "md", "-o", str(md_path)]
    )
    assert md.exit_code == 0, md.output
    text = md_path.read_text()
    assert text.startswith(f"# Conversation {ids['id']}")
    order = [
        text.index("**User:** Set a timer for ten minutes."),
        text.index("**Assistant:** Timer set for ten minutes, starting now."),
        text.index('*(interrupted after 700 ms; heard: "Timer set for")*'),
        text.index("**User:** Thanks!"),
    ]
    assert order == sorted(order)

    missing = runner.invoke(conversations_app, ["show", "0" * 32])
    assert missing.exit_code == 1 and "No conversation" in missing.output
    bad_format = runner.invoke(conversations_app, ["export", ids["id"], "--format", "pdf"])
    assert bad_format.exit_code == 2
