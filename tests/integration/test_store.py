"""The conversation store against real databases: a SQLite file and a real PostgreSQL server.

Every test here runs on both backends (`store_url` is parametrized); PostgreSQL is started by
the suite itself (`tests/support/postgres.py`).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from voxgate.audio import read_wav
from voxgate.config import get_settings
from voxgate.store.audio_log import AudioLog
from voxgate.store.base import ConversationNotFound, TurnRecord, UserSettings
from voxgate.store.models import Base
from voxgate.store.sql import SchemaError, SqlConversationStore, alembic_config, head_revision


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'voxgate.db'}"
    else:
        yield request.getfixturevalue("pg_database_url")

@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlConversationStore]:
    s = SqlConversationStore(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()

async def test_create_get_and_list_with_paging_per_user(store: SqlConversationStore) -> None:
    before = datetime.now(UTC)
    ids_a = [
        (await store.create_conversation("alice", "cascade", {"n": i, "tag": "ä"})).id
        for i in range(5)
    ]
    ids_b = [(await store.create_conversation("bob", "openai")).id for _ in range(2)]
    assert len(set(ids_a + ids_b)) == 7
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids_a)  # uuid4 hex

    got = await store.get_conversation(ids_a[2])
    assert got is not None
    assert (got.user_id, got.engine, got.metadata, got.turns, got.ended_at) == (
        "alice",
        "cascade",
        {"n": 2, "tag": "ä"},
        [],
        None,
    )
    assert got.started_at.tzinfo is not None and got.started_at.utcoffset() == timedelta(0)
    assert (
        before - timedelta(seconds=1) <= got.started_at <= datetime.now(UTC) + timedelta(seconds=1)
    )
    assert await store.get_conversation("0" * 32) is None

    # Paging through alice's conversations: newest first, no overlap, nothing skipped.
    seen: list[str] = []
    for offset in range(0, 6, 2):
        page, total = await store.list_conversations("alice", limit=2, offset=offset)
        assert total == 5
        seen += [c.id for c in page]
        assert all(c.user_id == "alice" for c in page)
    assert seen == list(reversed(ids_a))

    everything, total = await store.list_conversations(None, limit=50)
    assert total == 7 and {c.id for c in everything} == set(ids_a + ids_b)
    started = [c.started_at for c in everything]
    assert started == sorted(started, reverse=True)
    empty, total = await store.list_conversations("nobody")
    assert (empty, total) == ([], 0)
    with pytest.raises(ValueError):
        await store.list_conversations(limit=0)

async def test_turns_in_order_interrupted_heard_text_and_end(store: SqlConversationStore) -> None:
    conv = await store.create_conversation("carol", "cascade")
    t0 = datetime.now(UTC)
    user = await store.add_turn(
        conv.id,
        TurnRecord(
            role="user",
            text="what time is it",
            item_id="item_u1",
            started_at=t0,
            ended_at=t0 + timedelta(seconds=2),
            audio_ms=2000,
        ),
    )
    assistant = await store.add_turn(
        conv.id,
        TurnRecord(
            role="assistant",
            text="It is three o'clock in the afternoon.",
            item_id="item_a1",
            started_at=t0 + timedelta(seconds=3),
        ),
    )
    third = await store.add_turn(conv.id, TurnRecord(role="user", text="thanks"))
    assert (user.turn_index, assistant.turn_index, third.turn_index) == (0, 1, 2)
    assert user.id is not None and assistant.id is not None and assistant.id > user.id
    assert assistant.ended_at is not None  # final at write time

    await store.mark_interrupted(assistant.id, "It is three", 850)
    await store.end_conversation(conv.id)

    got = await store.get_conversation(conv.id)
    assert got is not None and got.ended_at is not None and got.turn_count == 3
    assert [t.text for t in got.turns] == [
        "what time is it",
        "It is three o'clock in the afternoon.",
        "thanks",
    ]
    u, a, _ = got.turns
    assert (u.role, u.item_id, u.audio_ms, u.interrupted, u.heard_text) == (
        "user",
        "item_u1",
        2000,
        False,
        None,
    )
    assert u.started_at == t0 and u.ended_at == t0 + timedelta(seconds=2)
    assert (a.role, a.interrupted, a.heard_text, a.audio_ms) == (
        "assistant",
        True,
        "It is three",
        850,
    )
    # Resume replays what the listener heard, not what was planned.
    assert [t.remembered_text for t in got.turns] == ["what time is it", "It is three", "thanks"]
    # A resumed conversation that ends again ends at its latest session's end.
    first_end = got.ended_at
    await store.end_conversation(conv.id)
    again = await store.get_conversation(conv.id, with_turns=False)
    assert again is not None and again.ended_at is not None and again.ended_at >= first_end
    assert again.turns == [] and again.turn_count == 3

    with pytest.raises(ValueError):
        await store.add_turn(conv.id, TurnRecord(role="system", text="nope"))  # type: ignore[arg-type]
    with pytest.raises(ConversationNotFound):
        await store.add_turn("f" * 32, TurnRecord(role="user", text="orphan"))

async def test_delete_removes_conversation_and_turns(store: SqlConversationStore) -> None:
    keep = await store.create_conversation("dave", "cascade")
    doomed = await store.create_conversation("dave", "cascade")
    for i in range(3):
        await store.add_turn(doomed.id, TurnRecord(role="user", text=f"t{i}"))
        await store.add_turn(keep.id, TurnRecord(role="user", text=f"k{i}"))
    assert await store.delete_conversation(doomed.id) is True
    assert await store.delete_conversation(doomed.id) is False
    assert await store.get_conversation(doomed.id) is None
    kept = await store.get_conversation(keep.id)
    assert kept is not None and [t.text for t in kept.turns] == ["k0", "k1", "k2"]
    async with store.engine.connect() as conn:
        from sqlalchemy import func, select

        from voxgate.store.models import Turn

        orphans = (
            await conn.execute(
                select(func.count()).select_from(Turn).where(Turn.conversation_id == doomed.id)
            )
        ).scalar_one()
    assert orphans == 0

async def test_expire_removes_only_conversations_idle_past_the_cutoff(
    store: SqlConversationStore,
) -> None:
    from datetime import UTC, datetime, timedelta

    old = [await store.create_conversation("erin", "cascade") for _ in range(3)]
    for conv in old:
        await store.add_turn(conv.id, TurnRecord(role="user", text="old"))
    cutoff = datetime.now(UTC) + timedelta(milliseconds=50)
    await asyncio.sleep(0.2)
    fresh = await store.create_conversation("erin", "cascade")
    resumed = old[0]
    await store.end_conversation(resumed.id)  # ended after the cutoff: recent activity
    first = await store.expire_conversations(cutoff, limit=1)
    rest = await store.expire_conversations(cutoff)
    assert len(first) == 1 and sorted(first + rest) == sorted(c.id for c in old[1:])
    assert await store.expire_conversations(cutoff) == []
    _, total = await store.list_conversations("erin")
    assert total == 2 and await store.get_conversation(fresh.id) is not None
    kept = await store.get_conversation(resumed.id)
    assert kept is not None and [t.text for t in kept.turns] == ["old"]


async def test_user_settings_round_trip(store: SqlConversationStore) -> None:
    assert await store.get_user_settings("erin") is None
    await store.create_conversation("erin", "cascade")  # creates the user row, no settings yet
    assert await store.get_user_settings("erin") == UserSettings("erin")
    wanted = UserSettings(
        "erin", voice="marin", instructions="Be brief.", personality={"humor": 80, "empathy": 20}
    )
    await store.save_user_settings(wanted)
    assert await store.get_user_settings("erin") == wanted
    changed = UserSettings("erin", voice="cedar", instructions=None, personality=None, engine="openai")
    await store.save_user_settings(changed)
    assert await store.get_user_settings("erin") == changed
    # A user who never had a conversation can save settings too.
    await store.save_user_settings(UserSettings("frank", voice="alloy"))
    assert await store.get_user_settings("frank") == UserSettings("frank", voice="alloy")

async def test_conversation_survives_restart_and_migrations_are_idempotent(store_url: str) -> None:
    first = SqlConversationStore(store_url)
    await first.open()
    assert await first.current_revision() == head_revision() == "0002"
    conv = await first.create_conversation("gina", "cascade", {"lang": "en"})
    await first.add_turn(conv.id, TurnRecord(role="user", text="remember me"))
    await first.close()
    assert await first.ping() is False  # closed

    second = SqlConversationStore(store_url)
    await second.open()  # re-runs `upgrade head`: must be a no-op on a current schema
    try:
        assert await second.ping() is True
        assert await second.current_revision() == "0002"
        got = await second.get_conversation(conv.id)
        assert got is not None and got.metadata == {"lang": "en"}
        assert [t.text for t in got.turns] == ["remember me"]
        # Resume: new turns continue the numbering.
        t = await second.add_turn(conv.id, TurnRecord(role="assistant", text="I do."))
        assert t.turn_index == 1

        # The migrations build exactly what the models declare.
        async with second.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert diff == []
        assert {"users", "conversations", "turns", "alembic_version"} <= tables
    finally:
        await second.close()

async def test_upgrade_from_0001_keeps_users_and_adds_the_preferred_engine(store_url: str) -> None:
    """A database written by the previous release (schema 0001) is upgraded on open: the users'
    saved settings are kept and they have no preferred engine until they save one."""
    old = SqlConversationStore(store_url)
    old._engine = old._create_engine()  # connect without migrating to head
    try:
        async with old.engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0001"))
            await conn.execute(
                text(
                    "INSERT INTO users (id, voice, instructions, created_at, updated_at) "
                    "VALUES ('olly', 'cedar', 'Be brief.', :now, :now)"
                ),
                {"now": datetime.now(UTC)},
            )
    finally:
        await old.close()
    store = SqlConversationStore(store_url)
    await store.open()
    try:
        assert await store.current_revision() == head_revision() == "0002"
        assert await store.get_user_settings("olly") == UserSettings(
            "olly", voice="cedar", instructions="Be brief.", engine=None
        )
        await store.save_user_settings(UserSettings("olly", voice="cedar", engine="openai"))
        assert (await store.get_user_settings("olly")).engine == "openai"  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_open_refuses_a_schema_from_the_future(store_url: str) -> None:
    first = SqlConversationStore(store_url)
    await first.open()
    async with first.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    await first.close()
    later = SqlConversationStore(store_url)
    with pytest.raises(SchemaError, match="f00dfeed"):
        await later.open()
    assert await later.ping() is False

async def test_concurrent_open_of_a_fresh_database(store_url: str) -> None:
    """Gateways starting at once on an empty database all come up (one migrates)."""
    stores = [SqlConversationStore(store_url) for _ in range(4)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(s.open() for s in stores), return_exceptions=True), timeout=60
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        for s in stores:
            assert await s.current_revision() == head_revision()
    finally:
        for s in stores:
            await s.close()

_MIGRATOR = textwrap.dedent(
    """
    import asyncio, logging, sys, time
    from pathlib import Path

    from voxgate.store.sql import SqlConversationStore

    print("ready", flush=True)
    # Alembic says "Running upgrade <from> -> <to>" for each migration it applies.
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    go = Path(sys.argv[2])
    while not go.exists():  # both processes migrate at the same moment
        time.sleep(0.002)

    async def main(url):
        store = SqlConversationStore(url)
        await store.open()
        print("revision", await store.current_revision(), flush=True)
        await store.close()

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_two_processes_starting_at_once_migrate_a_fresh_database_once(
    store_url: str, tmp_path: Path
) -> None:
    """Two `voxgate serve` processes starting together on an empty database: the migration
    lock (PostgreSQL advisory lock, SQLite `BEGIN IMMEDIATE`) lets exactly one of them apply
    each migration; the other waits, then finds the schema at head. Both come up."""
    script, go = tmp_path / "migrate.py", tmp_path / "go"
    script.write_text(_MIGRATOR)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(script), store_url, str(go),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        for proc in procs:  # imports done in both before either touches the database
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), timeout=60) == b"ready\n"
        go.touch()
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    logs = [out.decode() for out, _ in outputs]
    assert [p.returncode for p in procs] == [0, 0], logs
    head = head_revision()
    assert all(f"revision {head}" in log for log in logs), logs
    # Each migration ran exactly once, all of them in the same process.
    applied = [re.findall(r"Running upgrade .*? -> (\w+)", log) for log in logs]
    revisions = ScriptDirectory.from_config(alembic_config()).walk_revisions()
    every = sorted(r.revision for r in revisions)
    assert sorted(applied[0] + applied[1]) == every, logs
    assert [] in applied, logs
    # And the schema is right, once: one version row, the tables the models declare.
    store = SqlConversationStore(store_url)
    await store.open()
    try:
        async with store.engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
        assert [tuple(v) for v in versions] == [(head,)]
        assert diff == []
    finally:
        await store.close()


async def test_concurrent_add_turn_from_many_tasks(store_url: str) -> None:
    # Two store instances stand for two gateway processes sharing the database.
    a, b = SqlConversationStore(store_url), SqlConversationStore(store_url)
    await a.open()
    await b.open()
    try:
        convs = [await a.create_conversation(f"user{i}", "cascade") for i in range(2)]
        per_conv = 20

        async def write(i: int) -> TurnRecord:
            conv = convs[i % 2]
            s = a if i % 3 else b
            return await s.add_turn(conv.id, TurnRecord(role="user", text=f"turn {i}"))

        written = await asyncio.wait_for(
            asyncio.gather(*(write(i) for i in range(2 * per_conv))), timeout=90
        )
        assert len({t.id for t in written}) == 2 * per_conv
        for conv in convs:
            got = await a.get_conversation(conv.id)
            assert got is not None and got.turn_count == per_conv
            assert [t.turn_index for t in got.turns] == list(range(per_conv))
            mine = {t.text for t in written if t.conversation_id == conv.id}
            assert {t.text for t in got.turns} == mine and len(mine) == per_conv
    finally:
        await a.close()
        await b.close()

_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from voxgate.store.base import TurnRecord
    from voxgate.store.sql import SqlConversationStore

    async def main(url, conversation_id):
        store = SqlConversationStore(url)
        await store.open()
        i = 0
        while True:  # until SIGKILL
            role = "user" if i % 2 == 0 else "assistant"
            await store.add_turn(conversation_id, TurnRecord(role=role, text=f"turn {i}"))
            print(f"committed {i}", flush=True)
            i += 1

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)

async def test_sigkill_keeps_every_committed_turn(store_url: str, tmp_path: Path) -> None:
    setup = SqlConversationStore(store_url)
    await setup.open()
    conv = await setup.create_conversation("harry", "cascade")
    await setup.close()

    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        store_url,
        conv.id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    committed = -1
    try:
        while committed < 14:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            if not line:
                err = await asyncio.wait_for(proc.stderr.read(), timeout=30)
                pytest.fail(f"writer exited early ({await proc.wait()}): {err.decode()}")
            committed = int(line.split()[1])
        proc.send_signal(signal.SIGKILL)  # mid-write: it is already working on the next turn
        assert await asyncio.wait_for(proc.wait(), timeout=30) == -signal.SIGKILL
        # Lines printed before the kill may still sit in the pipe.
        rest = await asyncio.wait_for(proc.stdout.read(), timeout=30)
        for line in rest.splitlines():
            committed = max(committed, int(line.split()[1]))
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), timeout=30)

    after = SqlConversationStore(store_url)
    await after.open()  # also recovers the SQLite WAL left by the killed process
    try:
        got = await after.get_conversation(conv.id)
    finally:
        await after.close()
    assert got is not None
    texts = [t.text for t in got.turns]
    # Every turn reported committed is there, in order; at most the one in flight beyond.
    assert texts[: committed + 1] == [f"turn {i}" for i in range(committed + 1)]
    assert len(texts) - (committed + 1) in (0, 1)
    assert got.turn_count == len(texts)

def test_audio_log_writes_wav_per_turn(tmp_path: Path) -> None:
    assert AudioLog.from_settings(get_settings(audio_log_dir=None)) is None  # off by default
    log = AudioLog.from_settings(get_settings(audio_log_dir=str(tmp_path / "audio")))
    assert log is not None
    pcm = bytes(range(256)) * 40
    user = log.write("abc123", 0, "user", pcm, 16000)
    assistant = log.write("abc123", 1, "assistant", pcm[:1000], 24000)
    assert user == tmp_path / "audio" / "abc123" / "0000-user.wav"
    assert read_wav(user) == (pcm, 16000)
    assert read_wav(assistant) == (pcm[:1000], 24000)
    assert log.files("abc123") == [user, assistant]
    with pytest.raises(ValueError):
        log.write("../escape", 0, "user", pcm, 16000)
    log.delete("abc123")
    assert log.files("abc123") == [] and not (tmp_path / "audio" / "abc123").exists()

async def test_in_memory_sqlite_survives_concurrent_sessions() -> None:
    """`sqlite+aiosqlite:///:memory:` is one shared connection: concurrent sessions' transactions
    must take turns on it, not interleave (that failed inserts with foreign-key errors)."""
    from voxgate.store.base import TurnRecord
    from voxgate.store.sql import SqlConversationStore

    store = SqlConversationStore("sqlite+aiosqlite:///:memory:")
    await store.open()
    try:
        async def session(i: int) -> str:
            conv = await store.create_conversation(f"user-{i % 3}", "cascade", {"i": i})
            for n in range(3):
                await store.add_turn(conv.id, TurnRecord(role="user", text=f"{i}-{n}"))
            await store.end_conversation(conv.id)
            return conv.id

        ids = await asyncio.gather(*(session(i) for i in range(30)))
        for conversation_id in ids:
            record = await store.get_conversation(conversation_id)
            assert record is not None and len(record.turns) == 3 and record.ended_at is not None
        _, total = await store.list_conversations(None, limit=100)
        assert total == 30
    finally:
        await store.close()
