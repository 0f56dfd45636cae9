"""Text helpers for the cascade: cutting a token stream into speakable sentences, and working
out which words of a partly played reply the listener actually heard."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at . ! ? (or …), possibly followed by closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r"[.!?…]+[\"')\]]*\s+|\n+")
_SPEAKABLE = re.compile(r"\w")


class SentenceSplitter:
    """Feed streamed text; get back complete sentences as soon as they end.

    Speaking sentence by sentence is what makes first audio fast: the first sentence goes to
    text-to-speech while the model is still writing the second. A long run without a full stop
    is cut at a comma so a rambling first sentence does not hold the audio back.
    """

    def __init__(self, max_chars: int = 160) -> None:
        self._buf = ""
        self._max = max_chars

    def push(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            m = _BOUNDARY.search(self._buf)
            if m is None:
                break
            sentence, self._buf = self._buf[: m.end()].strip(), self._buf[m.end() :]
            if sentence:
                out.append(sentence)
        if len(self._buf) > self._max:
            cut = self._buf.rfind(", ", 0, self._max)
            cut = cut + 1 if cut > 0 else self._buf.rfind(" ", 0, self._max)
            if cut > 0:
                out.append(self._buf[:cut].strip())
                self._buf = self._buf[cut:].lstrip()
        return [s for s in out if s]

    def flush(self) -> str:
        rest, self._buf = self._buf.strip(), ""
        return rest


def is_speakable(sentence: str) -> bool:
    return bool(_SPEAKABLE.search(sentence))


#: Typical duration of one spoken word (espeak-ng's default 175 words a minute is 343 ms); used
#: to place words in a sentence whose audio is still being made when the reply is cut.
MS_PER_WORD = 340.0


@dataclass(slots=True)
class SpokenSentence:
    """One sentence of an assistant item and where its audio sits in the item (ms).

    `complete` is false while its audio is still being synthesised: `end_ms` is then only how
    far the audio has got, not where the sentence ends.
    """

    text: str
    start_ms: float
    end_ms: float
    complete: bool = True


def heard_text(sentences: list[SpokenSentence], played_ms: float) -> str:
    """Sentences whose audio fully played, plus the words of the sentence in progress in
    proportion to how much of its audio played (speech rate is roughly even within a sentence)."""
    parts: list[str] = []
    for s in sentences:
        words = s.text.split()
        end_ms = s.end_ms
        if not s.complete:
            end_ms = max(end_ms, s.start_ms + len(words) * MS_PER_WORD)
        if end_ms <= played_ms:
            parts.append(s.text)
            continue
        if s.start_ms < played_ms and end_ms > s.start_ms:
            n = int(len(words) * (played_ms - s.start_ms) / (end_ms - s.start_ms))
            if n > 0:
                parts.append(" ".join(words[:n]))
        break
    return " ".join(parts)
