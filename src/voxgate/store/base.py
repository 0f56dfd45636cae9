"""The storage seam: what the gateway needs from a conversation store.

`voxgate.store.sql.SqlConversationStore` implements it with SQLAlchemy 2 async (SQLite by
default, PostgreSQL by URL). The session writes each turn as soon as it is final, never batching
to session end, so a crash loses at most the turn in flight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(slots=True)
class TurnRecord:
    #: A `tool` turn is one tool call: `text` is a JSON object with `name`, `arguments`,
    #: `output`, `status` and (when it failed) `error`; `item_id` is the call id.
    role: Literal["user", "assistant", "tool"]
    text: str
    item_id: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    interrupted: bool = False
    #: For an interrupted assistant turn: the text the listener actually heard.
    heard_text: str | None = None
    audio_ms: int | None = None
    id: int | None = None  # set by the store
    conversation_id: str | None = None
    #: Position in the conversation (0, 1, ...), in write order; set by the store.
    turn_index: int | None = None

    @property
    def remembered_text(self) -> str:
        """What the conversation should remember of this turn (resume, reconnect history).

        For an interrupted assistant turn that is what the listener heard, not what was planned.
        """
        if self.interrupted and self.heard_text is not None:
            return self.heard_text
        return self.text

    def to_json(self) -> dict[str, Any]:
        """The public JSON shape (REST API, `voxgate conversations export`)."""
        return {
            "role": self.role,
            "text": self.text,
            "itemId": self.item_id,
            "startedAt": _iso(self.started_at),
            "endedAt": _iso(self.ended_at),
            "interrupted": self.interrupted,
            "heardText": self.heard_text,
            "audioMs": self.audio_ms,
        }


@dataclass(slots=True)
class ConversationRecord:
    id: str
    user_id: str
    engine: str
    started_at: datetime
    ended_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    turn_count: int = 0
    turns: list[TurnRecord] = field(default_factory=list)

    def to_json(self, *, with_turns: bool = False) -> dict[str, Any]:
        """The public JSON shape (REST API, `voxgate conversations export`)."""
        out: dict[str, Any] = {
            "id": self.id,
            "userId": self.user_id,
            "engine": self.engine,
            "startedAt": _iso(self.started_at),
            "endedAt": _iso(self.ended_at),
            "metadata": self.metadata,
            "turnCount": self.turn_count,
        }
        if with_turns:
            out["turns"] = [t.to_json() for t in self.turns]
        return out


@dataclass(slots=True)
class UserSettings:
    user_id: str
    voice: str | None = None
    instructions: str | None = None
    personality: dict[str, int] | None = None
    #: The engine their sessions use when `start` names none (while they may still use it).
    engine: str | None = None


class ConversationNotFound(LookupError):
    """The conversation id names no stored conversation (never created, or deleted)."""


class ConversationStore(ABC):
    """All methods are safe to call concurrently from many sessions."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply migrations (Alembic) so the schema is current."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the database answers (readiness in /health)."""

    @abstractmethod
    async def create_conversation(
        self, user_id: str, engine: str, metadata: dict[str, Any] | None = None
    ) -> ConversationRecord: ...

    @abstractmethod
    async def get_conversation(
        self, conversation_id: str, *, with_turns: bool = True
    ) -> ConversationRecord | None: ...

    @abstractmethod
    async def list_conversations(
        self, user_id: str | None = None, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[ConversationRecord], int]:
        """A page of conversations (newest first) and the total count; all users when None."""

    @abstractmethod
    async def end_conversation(self, conversation_id: str) -> None: ...

    @abstractmethod
    async def delete_conversation(self, conversation_id: str) -> bool: ...

    @abstractmethod
    async def expire_conversations(self, before: datetime, *, limit: int = 500) -> list[str]:
        """Delete up to `limit` conversations (with their turns) whose last activity (end, or
        start while unended) is before `before`; -> their ids, so their audio can go too."""

    @abstractmethod
    async def add_turn(self, conversation_id: str, turn: TurnRecord) -> TurnRecord:
        """Insert one final turn; returns it with `id` set.

        Raises `ConversationNotFound` when the conversation does not exist.
        """

    @abstractmethod
    async def mark_interrupted(self, turn_id: int, heard_text: str, audio_ms: int | None) -> None:
        """An already-written assistant turn turned out to be cut short."""

    @abstractmethod
    async def get_user_settings(self, user_id: str) -> UserSettings | None: ...

    @abstractmethod
    async def save_user_settings(self, settings: UserSettings) -> None: ...
