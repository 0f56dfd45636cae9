"""`SqlConversationStore`: the conversation store on SQLAlchemy 2 async.

SQLite through aiosqlite is the default (`voxgate.db` in the user's data directory, see
`config.default_database_url`); PostgreSQL through asyncpg by URL. `open()` applies the Alembic migrations, so a
fresh database and an old one both end up at the current schema.

Durability is the point of this module: every write is its own short transaction that commits
before the call returns, so a process killed mid-conversation keeps every turn it had written.
No transaction ever waits on anything but the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Table, delete, event, func, select, text, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from voxgate.store.base import (
    ConversationNotFound,
    ConversationRecord,
    ConversationStore,
    TurnRecord,
    UserSettings,
)
from voxgate.store.models import Conversation, Turn, User

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: How long a SQLite writer waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Arbitrary constant key for the PostgreSQL advisory lock that serialises concurrent migrators.
_PG_MIGRATION_LOCK = 0x766F7867  # "voxg"


class SchemaError(RuntimeError):
    """The database's schema cannot be migrated to this version's head (e.g. it is newer)."""


def normalize_database_url(database_url: str) -> URL:
    """Map plain driver-less URLs onto the async drivers we ship.

    Operators often paste `postgresql://...` or `sqlite:///...`; those name sync drivers that
    an async engine cannot use, so they are rewritten to asyncpg / aiosqlite.
    """
    url = make_url(database_url)
    driver = url.drivername
    if driver in ("sqlite", "sqlite+pysqlite"):
        url = url.set(drivername="sqlite+aiosqlite")
    elif driver in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        url = url.set(drivername="postgresql+asyncpg")
    return url


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configured in code: no `alembic.ini`, no dependence on the current directory."""
    cfg = Config()
    # configparser interpolates '%': escape it in case the install path contains one.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _now() -> datetime:
    return datetime.now(UTC)


def _conversation_record(row: Any) -> ConversationRecord:
    return ConversationRecord(
        id=row.id,
        user_id=row.user_id,
        engine=row.engine,
        started_at=row.started_at,
        ended_at=row.ended_at,
        metadata=dict(row.metadata or {}),
        turn_count=row.turn_count,
    )


def _turn_record(row: Any) -> TurnRecord:
    return TurnRecord(
        role=row.role,
        text=row.text,
        item_id=row.item_id,
        started_at=row.started_at,
        ended_at=row.ended_at,
        interrupted=bool(row.interrupted),
        heard_text=row.heard_text,
        audio_ms=row.audio_ms,
        id=row.id,
        conversation_id=row.conversation_id,
        turn_index=row.turn_index,
    )


_CONVERSATIONS = cast(Table, Conversation.__table__)
_TURNS = cast(Table, Turn.__table__)

_CONVERSATION_COLUMNS = (
    Conversation.id,
    Conversation.user_id,
    Conversation.engine,
    Conversation.started_at,
    Conversation.ended_at,
    Conversation.meta.label("metadata"),
    Conversation.turn_count,
)


class SqlConversationStore(ConversationStore):
    """A `ConversationStore` on any SQLAlchemy async URL (SQLite and PostgreSQL are tested)."""

    def __init__(self, database_url: str, *, echo: bool = False) -> None:
        self.url = normalize_database_url(database_url)
        self._echo = echo
        self._engine: AsyncEngine | None = None
        #: In-memory SQLite lives on one shared connection (StaticPool); concurrent transactions
        #: would interleave on it (a half-done insert seen by another session's commit), so
        #: calls take turns. File and PostgreSQL databases have real pools and no lock.
        self._serial: asyncio.Lock | None = None

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open; call `await store.open()` first")
        return self._engine

    def display_url(self) -> str:
        """The URL with any password masked, for logs and the CLI."""
        return self.url.render_as_string(hide_password=True)

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._engine is not None:
            return
        self._engine = self._create_engine()
        try:
            await self._migrate()
        except CommandError as exc:
            await self._engine.dispose()
            self._engine = None
            raise SchemaError(
                f"cannot bring the database at {self.display_url()} to schema revision "
                f"{head_revision()}: {exc}. Was it created by a newer voxgate?"
            ) from exc
        except BaseException:
            await self._engine.dispose()
            self._engine = None
            raise
        log.info("conversation store open at %s (schema %s)", self.display_url(), head_revision())

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def __aenter__(self) -> SqlConversationStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _create_engine(self) -> AsyncEngine:
        kwargs: dict[str, Any] = {"echo": self._echo}
        if self.dialect == "sqlite":
            database = self.url.database
            memory = not database or database == ":memory:" or database.startswith("file::memory:")
            if memory or database is None:
                # One shared connection, otherwise every pooled connection is a new empty DB.
                kwargs["poolclass"] = StaticPool
                self._serial = asyncio.Lock()
            else:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # pysqlite's `timeout` is SQLite's busy timeout, in seconds.
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs["pool_pre_ping"] = True
        engine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction (committed on exit); serialized on an in-memory database."""
        async with contextlib.AsyncExitStack() as stack:
            if self._serial is not None:
                await stack.enter_async_context(self._serial)
            yield await stack.enter_async_context(self.engine.begin())

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; serialized on an in-memory database."""
        async with contextlib.AsyncExitStack() as stack:
            if self._serial is not None:
                await stack.enter_async_context(self._serial)
            yield await stack.enter_async_context(self.engine.connect())

    async def _migrate(self) -> None:
        """Bring the schema to Alembic head, safely even when several processes start at once."""
        engine = self.engine
        if self.dialect == "sqlite":
            await self._sqlite_enable_wal()
            async with engine.connect() as conn:
                # Table rebuilds in future migrations must not fire ON DELETE CASCADE; the pragma
                # is a no-op inside a transaction, so it is flipped around it.
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                # BEGIN IMMEDIATE takes the write lock up front: a second process starting at the
                # same moment waits (busy timeout), then sees the schema already at head.
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    await conn.run_sync(_upgrade_head)
                    await conn.commit()
                except BaseException:
                    await conn.rollback()
                    raise
                finally:
                    await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    await conn.commit()
        else:
            async with engine.begin() as conn:
                if self.dialect == "postgresql":
                    # Transactional DDL plus this lock: concurrent migrators run one at a time.
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                    )
                await conn.run_sync(_upgrade_head)

    async def _sqlite_enable_wal(self) -> None:
        """Switch the file to WAL once (the mode is stored in the file and persists).

        WAL lets readers run while a session writes a turn. Switching needs an exclusive lock
        and SQLite reports "database is locked" at once, without the busy timeout, when another
        process is switching a fresh file at the same moment; so retry here, asynchronously.
        """
        deadline = asyncio.get_running_loop().time() + SQLITE_BUSY_TIMEOUT_MS / 1000
        delay = 0.01
        while True:
            try:
                async with self._connect() as conn:
                    mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                    if str(mode).lower() not in ("wal", "memory"):
                        await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                return
            except OperationalError as exc:
                if "locked" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)

    async def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migration)."""
        async with self._connect() as conn:
            return await conn.run_sync(
                lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
            )

    async def ping(self) -> bool:
        if self._engine is None:
            return False
        try:
            async with asyncio.timeout(5):
                async with self._engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception:  # any failure means "not ready", which is all /health needs
            log.warning("store ping failed", exc_info=True)
            return False
        return True

    # --- conversations ----------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        """An INSERT with ON CONFLICT support for the current backend."""
        if self.dialect == "postgresql":
            return pg_dialect.insert(table)
        if self.dialect == "sqlite":
            return sqlite_dialect.insert(table)
        raise RuntimeError(f"unsupported database backend {self.dialect!r}")

    async def create_conversation(
        self, user_id: str, engine: str, metadata: dict[str, Any] | None = None
    ) -> ConversationRecord:
        now = _now()
        record = ConversationRecord(
            id=uuid.uuid4().hex,
            user_id=user_id,
            engine=engine,
            started_at=now,
            metadata=dict(metadata or {}),
        )
        async with self._begin() as conn:
            await conn.execute(
                self._insert(User)
                .values(id=user_id, created_at=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=["id"])
            )
            await conn.execute(
                _CONVERSATIONS.insert().values(
                    id=record.id,
                    user_id=user_id,
                    engine=engine,
                    started_at=now,
                    metadata=record.metadata,
                    turn_count=0,
                )
            )
        return record

    async def get_conversation(
        self, conversation_id: str, *, with_turns: bool = True
    ) -> ConversationRecord | None:
        async with self._connect() as conn:
            row = (
                await conn.execute(
                    select(*_CONVERSATION_COLUMNS).where(Conversation.id == conversation_id)
                )
            ).first()
            if row is None:
                return None
            record = _conversation_record(row)
            if with_turns:
                rows = await conn.execute(
                    select(Turn)
                    .where(Turn.conversation_id == conversation_id)
                    .order_by(Turn.turn_index)
                )
                record.turns = [_turn_record(r) for r in rows]
        return record

    async def list_conversations(
        self, user_id: str | None = None, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[ConversationRecord], int]:
        if limit < 1 or offset < 0:
            raise ValueError("limit must be >= 1 and offset >= 0")
        page = select(*_CONVERSATION_COLUMNS)
        count = select(func.count()).select_from(Conversation)
        if user_id is not None:
            page = page.where(Conversation.user_id == user_id)
            count = count.where(Conversation.user_id == user_id)
        # Newest first; the id breaks ties so pages never overlap or skip.
        page = (
            page.order_by(Conversation.started_at.desc(), Conversation.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._connect() as conn:
            total = (await conn.execute(count)).scalar_one()
            rows = (await conn.execute(page)).all()
        return [_conversation_record(r) for r in rows], int(total)

    async def end_conversation(self, conversation_id: str) -> None:
        # Always the latest end: a resumed conversation ends when its last session does.
        async with self._begin() as conn:
            await conn.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values(ended_at=_now())
            )

    async def delete_conversation(self, conversation_id: str) -> bool:
        async with self._begin() as conn:
            # Explicit, not only ON DELETE CASCADE: SQLite connections made by other tools
            # may have foreign keys off.
            await conn.execute(delete(Turn).where(Turn.conversation_id == conversation_id))
            result = await conn.execute(
                delete(Conversation).where(Conversation.id == conversation_id)
            )
        return bool(result.rowcount)

    async def expire_conversations(self, before: datetime, *, limit: int = 500) -> list[str]:
        last_activity = func.coalesce(Conversation.ended_at, Conversation.started_at)
        async with self._begin() as conn:
            ids = list(
                (
                    await conn.execute(
                        select(Conversation.id).where(last_activity < before).limit(limit)
                    )
                ).scalars()
            )
            if ids:
                await conn.execute(delete(Turn).where(Turn.conversation_id.in_(ids)))
                await conn.execute(delete(Conversation).where(Conversation.id.in_(ids)))
        return ids

    # --- turns ------------------------------------------------------------------------------

    async def add_turn(self, conversation_id: str, turn: TurnRecord) -> TurnRecord:
        if turn.role not in ("user", "assistant", "tool"):
            raise ValueError(f"a turn's role is 'user', 'assistant' or 'tool', not {turn.role!r}")
        ended_at = turn.ended_at or _now()
        async with self._begin() as conn:
            # The UPDATE comes first: it takes the write lock (SQLite) or the row lock
            # (PostgreSQL), so concurrent writers of one conversation get distinct indexes,
            # and it tells us whether the conversation exists.
            bumped = (
                await conn.execute(
                    update(Conversation)
                    .where(Conversation.id == conversation_id)
                    .values(turn_count=Conversation.turn_count + 1)
                    .returning(Conversation.turn_count)
                )
            ).first()
            if bumped is None:
                raise ConversationNotFound(conversation_id)
            turn_index = int(bumped[0]) - 1
            turn_id = (
                await conn.execute(
                    _TURNS.insert()
                    .values(
                        conversation_id=conversation_id,
                        turn_index=turn_index,
                        role=turn.role,
                        text=turn.text,
                        item_id=turn.item_id,
                        started_at=turn.started_at,
                        ended_at=ended_at,
                        interrupted=turn.interrupted,
                        heard_text=turn.heard_text,
                        audio_ms=turn.audio_ms,
                    )
                    .returning(Turn.id)
                )
            ).scalar_one()
        return replace(
            turn,
            id=int(turn_id),
            conversation_id=conversation_id,
            turn_index=turn_index,
            ended_at=ended_at,
        )

    async def mark_interrupted(self, turn_id: int, heard_text: str, audio_ms: int | None) -> None:
        values: dict[str, Any] = {"interrupted": True, "heard_text": heard_text}
        if audio_ms is not None:
            values["audio_ms"] = audio_ms
        async with self._begin() as conn:
            await conn.execute(update(Turn).where(Turn.id == turn_id).values(**values))

    # --- users ------------------------------------------------------------------------------

    async def get_user_settings(self, user_id: str) -> UserSettings | None:
        async with self._connect() as conn:
            row = (
                await conn.execute(
                    select(
                        User.id, User.voice, User.instructions, User.personality, User.engine
                    ).where(User.id == user_id)
                )
            ).first()
        if row is None:
            return None
        return UserSettings(
            user_id=row.id,
            voice=row.voice,
            instructions=row.instructions,
            personality=dict(row.personality) if row.personality is not None else None,
            engine=row.engine,
        )

    async def save_user_settings(self, settings: UserSettings) -> None:
        now = _now()
        fields = {
            "voice": settings.voice,
            "instructions": settings.instructions,
            "personality": settings.personality,
            "engine": settings.engine,
        }
        stmt = self._insert(User).values(
            id=settings.user_id, created_at=now, updated_at=now, **fields
        )
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={**fields, "updated_at": now})
        async with self._begin() as conn:
            await conn.execute(stmt)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings (WAL is per file: see `_sqlite_enable_wal`).

    The busy timeout makes concurrent writers queue instead of failing with "database is
    locked"; foreign keys are off by default in SQLite. `synchronous` stays at its FULL
    default: a committed turn survives even a power cut, which is worth one fsync per turn.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _upgrade_head(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


async def upgrade_database(database_url: str) -> tuple[str, str | None]:
    """Apply migrations and return (display URL, revision) — `voxgate db upgrade`."""
    store = SqlConversationStore(database_url)
    await store.open()
    try:
        return store.display_url(), await store.current_revision()
    finally:
        await store.close()
