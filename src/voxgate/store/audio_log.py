"""Optional per-turn WAV logs (`VOXGATE_AUDIO_LOG_DIR`; off by default).

Layout: `<dir>/<conversation id>/<turn index, 4 digits>-<role>.wav`, mono PCM16 at the rate the
audio was captured or produced. Recording voices is a privacy decision, so nothing is written
unless an operator sets the directory. Files are written to a temporary name and renamed, so a
crash never leaves a half-written WAV behind under the final name.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from voxgate.audio import wav_bytes
from voxgate.config import Settings

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class AudioLog:
    """Writes one WAV per turn under a directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    @classmethod
    def from_settings(cls, settings: Settings) -> AudioLog | None:
        """The configured audio log, or None when `VOXGATE_AUDIO_LOG_DIR` is unset (the default)."""
        return cls(settings.audio_log_dir) if settings.audio_log_dir else None

    def path_for(self, conversation_id: str, turn_index: int, role: str) -> Path:
        # Ids come from clients (`start.conversationId`): never let one escape the directory.
        if not _SAFE_ID.match(conversation_id):
            raise ValueError(f"unsafe conversation id for a file name: {conversation_id!r}")
        if role not in ("user", "assistant"):
            raise ValueError(f"role must be 'user' or 'assistant', not {role!r}")
        if turn_index < 0:
            raise ValueError("turn_index must be >= 0")
        return self.directory / conversation_id / f"{turn_index:04d}-{role}.wav"

    def write(
        self, conversation_id: str, turn_index: int, role: str, pcm16: bytes, rate: int
    ) -> Path:
        """Write one turn's audio; returns the file's path. Blocking: see `write_async`."""
        path = self.path_for(conversation_id, turn_index, role)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(wav_bytes(pcm16[: len(pcm16) - len(pcm16) % 2], rate))
        os.replace(tmp, path)
        return path

    async def write_async(
        self, conversation_id: str, turn_index: int, role: str, pcm16: bytes, rate: int
    ) -> Path:
        """`write` in a worker thread, so disk I/O never stalls the event loop's audio path."""
        return await asyncio.to_thread(self.write, conversation_id, turn_index, role, pcm16, rate)

    def files(self, conversation_id: str) -> list[Path]:
        """A conversation's WAVs in turn order."""
        folder = self.path_for(conversation_id, 0, "user").parent
        return sorted(folder.glob("*.wav")) if folder.is_dir() else []

    def delete(self, conversation_id: str) -> None:
        """Remove a conversation's audio (when the conversation itself is deleted)."""
        folder = self.path_for(conversation_id, 0, "user").parent
        shutil.rmtree(folder, ignore_errors=True)
