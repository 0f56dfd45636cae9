"""GPT-Live's transcripts as turns: timed fragments with no item ids, grouped by pauses.

GPT-Live sends `session.input_transcript.delta` and `session.output_transcript.delta` with
`start_ms`/`end_ms` on the session timeline and nothing else: no items, no done events. A turn
here is the fragments of one side until that side pauses (no fragment for `gap_ms` of
timeline) or, where the caller asks for it, until the other side starts. A `start_ms` that goes
backwards is a new session timeline (a reconnect): the open turn ends there.

Both the engine and the compatible relay group with this, so a conversation is stored as the
same turns whichever door it came through.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from voxgate.engines.base import Role

#: A pause this long ends a turn (field reports split GPT-Live transcripts at about 0.8 s).
GAP_MS = 800


def new_item_id(role: Role) -> str:
    return f"live_{role[0]}_{uuid.uuid4().hex[:16]}"


@dataclass(slots=True)
class LiveTurn:
    """One side's words from its first fragment to its pause."""

    role: Role
    item_id: str
    #: Everything so far, without GPT-Live's leading space.
    text: str = ""
    start_ms: int = 0
    end_ms: int = 0


class TranscriptTurns:
    """Open turns per side; `add` a fragment, `due` the turns a pause has ended."""

    def __init__(self, gap_ms: int = GAP_MS) -> None:
        self.gap_ms = gap_ms
        self.open: dict[Role, LiveTurn] = {}

    def add(
        self, role: Role, delta: str, start_ms: int, end_ms: int, *, closes_other: bool = True
    ) -> tuple[list[LiveTurn], LiveTurn, str]:
        """-> (the turns this fragment ended, the turn it belongs to, the text it added)."""
        ended: list[LiveTurn] = []
        other: Role = "assistant" if role == "user" else "user"
        if closes_other and other in self.open:
            ended.append(self.open.pop(other))
        turn = self.open.get(role)
        if turn is not None and (start_ms - turn.end_ms >= self.gap_ms or start_ms < turn.start_ms):
            ended.append(self.open.pop(role))
            turn = None
        if turn is None:
            turn = self.open[role] = LiveTurn(role, new_item_id(role), "", start_ms, end_ms)
        added = delta if turn.text else delta.lstrip()
        turn.text += added
        turn.end_ms = max(turn.end_ms, end_ms)
        return ended, turn, added

    def due(self, now_ms: int, role: Role | None = None) -> list[LiveTurn]:
        """The open turns (of `role`, or both) that `now_ms` has left paused for `gap_ms`."""
        ended = [
            turn
            for side, turn in self.open.items()
            if (role is None or side == role) and now_ms - turn.end_ms >= self.gap_ms
        ]
        for turn in ended:
            del self.open[turn.role]
        return ended

    def close(self, role: Role) -> LiveTurn | None:
        return self.open.pop(role, None)

    def close_all(self) -> list[LiveTurn]:
        ended = list(self.open.values())
        self.open.clear()
        return ended


__all__ = ["GAP_MS", "LiveTurn", "TranscriptTurns", "new_item_id"]
