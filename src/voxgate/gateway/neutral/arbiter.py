"""The turn arbiter: who has the floor, decided in the gateway the same way for every engine.

It watches what every engine reports (the user's voice activity and transcripts, the
assistant's audio) and what the app asks (`hold`, `allow_next`, `barge_in`), and decides:

- **Replies.** While the app holds the assistant, or a minimum pause (`minSilenceMs`) or an
  interruption policy is set, the engine no longer answers by itself (`set_turn_control`); the
  arbiter asks it to (`respond`) once the user's turn is over, unless the assistant is held.
- **A barge-in, or a cough?** User speech over the assistant stops it only once it is real:
  `interruptMinMs` of voiced audio and, with `interruptMinWords`, that many words that are not
  backchannels ("mm-hmm", "yeah"). While the words are awaited the client pauses playback
  (`assistant_paused`); a cough, noise or a backchannel resumes it (`assistant_resumed`) and
  gets no reply; real words stop the assistant where the listener paused (`interrupt`).
- **Long turns.** A user turn longer than `maxUtteranceMs` of audio is ended for the user
  (`commit`), and the rest of that sound is not sent on until the microphone goes quiet.

The client hears of it all in `turn` messages. The arbiter never holds up the audio path:
`feed` runs per microphone frame only while it listens (an addition, and one level
measurement while it weighs user speech over the assistant); the engine calls it decides on
run in order in its own task (`run`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from voxgate import protocol as P
from voxgate.config import DEFAULT_BACKCHANNELS, Settings
from voxgate.engines.base import ConversationEngine
from voxgate.protocol import ErrorCode, ProtocolError

log = logging.getLogger("voxgate.turns")

#: A microphone frame louder than this counts as voiced (the arbiter's own, engine-neutral
#: measure; real speech at a working microphone is 20-40 dB above it).
VOICE_DBFS = -45.0
#: After an utterance limit, the microphone is heard again after this much quiet.
QUIET_RELEASE_MS = 500
#: Quiet that ends one sound (for counting the voiced audio of the sound in progress).
SOUND_GAP_MS = 150
#: Quiet that ends one sound (for counting the voiced audio of the sound in progress).
SOUND_GAP_MS = 150
#: The client's jitter buffer and the network, on top of the audio's own length: how long
#: after the last audio the assistant may still be audible at the client.
PLAYBACK_SLACK_S = 0.5

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def words(text: str) -> list[str]:
    """Lower-case words of `text`; hyphens and punctuation separate ("Mm-hmm." -> mm, hmm)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True, slots=True)
class TurnPolicy:
    """How the arbiter steers one session (operator defaults, `start.turnDetection` on top)."""

    min_silence_ms: int = 0
    max_utterance_ms: int = 0
    interrupt_min_ms: int = 0
    interrupt_min_words: int = 0
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS
    false_interruption_ms: int = 1500
    _backchannel_words: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        vocabulary = frozenset(w for entry in self.backchannels for w in words(entry))
        object.__setattr__(self, "_backchannel_words", vocabulary)

    @classmethod
    def from_settings(cls, settings: Settings, td: P.TurnDetection | None) -> TurnPolicy:
        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        td = td or P.TurnDetection()
        return cls(
            min_silence_ms=pick(td.min_silence_ms, settings.turn_min_silence_ms),
            max_utterance_ms=pick(td.max_utterance_ms, settings.turn_max_utterance_ms),
            interrupt_min_ms=pick(td.interrupt_min_ms, settings.turn_interrupt_min_ms),
            interrupt_min_words=pick(td.interrupt_min_words, settings.turn_interrupt_min_words),
            backchannels=tuple(pick(td.backchannels, settings.turn_backchannels)),
            false_interruption_ms=pick(
                td.false_interruption_ms, settings.turn_false_interruption_ms
            ),
        )

    @property
    def gateway_interrupts(self) -> bool:
        """User speech over the assistant is weighed here, not by the engine."""
        return self.interrupt_min_ms > 0 or self.interrupt_min_words > 0

    @property
    def gateway_responds(self) -> bool:
        """Replies are asked for here, not started by the engine at the end of each turn."""
        return self.gateway_interrupts or self.min_silence_ms > 0

    def without_turn_control(self) -> tuple[TurnPolicy, list[str]]:
        """The policy an engine without turn control can follow, and what it drops."""
        dropped = [
            name
            for name, value in (
                ("minSilenceMs", self.min_silence_ms),
                ("interruptMinMs", self.interrupt_min_ms),
                ("interruptMinWords", self.interrupt_min_words),
            )
            if value
        ]
        kept = TurnPolicy(
            max_utterance_ms=self.max_utterance_ms,
            backchannels=self.backchannels,
            false_interruption_ms=self.false_interruption_ms,
        )
        return kept, dropped

    def meaningful_words(self, text: str) -> int:
        """How many words of `text` are not backchannels."""
        return sum(1 for w in words(text) if w not in self._backchannel_words)

    def to_wire(self, turn_control: bool) -> dict[str, Any]:
        return {
            "interruption": "gateway" if self.gateway_interrupts else "engine",
            "hold": turn_control,
            "minSilenceMs": self.min_silence_ms,
            "maxUtteranceMs": self.max_utterance_ms,
            "interruptMinMs": self.interrupt_min_ms,
            "interruptMinWords": self.interrupt_min_words,
            "backchannels": list(self.backchannels),
            "falseInterruptionMs": self.false_interruption_ms,
        }


class FloorSide(Protocol):
    """What the arbiter needs from the session it serves."""

    def say(self, message: Mapping[str, Any]) -> None:
        """Queue a message for the client."""

    def stop_client_audio(self, item_id: str) -> None:
        """Drop the item's audio still queued for the client, at once."""

    def sent_ms(self, item_id: str) -> float:
        """Milliseconds of the item's audio sent towards the client so far."""

    async def flush_pending_audio(self) -> None:
        """Hand the engine the microphone audio gathered but not yet sent."""


@dataclass(slots=True)
class _UserTurn:
    """The user's utterance in progress (or, over the assistant, one still being judged)."""

    item_ids: list[str]
    #: Began while the assistant was audible: a barge-in, or a cough, still to be judged.
    over_assistant: bool
    voiced_bytes: int = 0  # of which voiced (the interruption threshold)
    words: int = 0  # meaningful words heard so far
    heard_any: bool = False  # any transcript at all (a backchannel, not noise)
    speaking: bool = True
    decided: bool = False


@dataclass(slots=True)
class _Playing:
    """The assistant item the client plays (or played last)."""

    item_id: str
    started: float  # monotonic: its first audio went to the client
    paused_at: float | None = None
    paused_s: float = 0.0
    generated: bool = False  # the engine finished it
    cut: bool = False  # interrupted
    ended: bool = False  # `assistant_turn_ended` said
    end_reason: str | None = None  # how the engine finished it: said once it has played out


class TurnArbiter:
    """One session's floor; see the module docstring."""

    def __init__(
        self,
        policy: TurnPolicy,
        engine: ConversationEngine,
        side: FloorSide,
        *,
        manual: bool,
        in_bytes_per_s: int,
    ) -> None:
        self.policy = policy
        self.engine = engine
        self.side = side
        self.turn_control = engine.capabilities.turn_control
        self.held = False
        #: The receive loop hands `feed` each microphone frame while this is true.
        self.listening = False
        self._manual = manual
        self._user: _UserTurn | None = None
        self._playing: _Playing | None = None
        self._muted = False  # after an utterance limit, until the microphone is quiet
        self._quiet_bytes = 0
        #: The utterance in progress by the arbiter's own measure (engines report speech at
        #: different moments; ElevenLabs only with its first words): client audio since the
        #: first voiced frame, until `QUIET_RELEASE_MS` of quiet or the engine's end of turn.
        self._utterance_bytes = 0
        #: While speech over the assistant is judged: the voiced audio of the sound in progress,
        #: so a barge-in is weighed from its first syllable, not from when the engine noticed it.
        self._judging = policy.gateway_interrupts
        self._sound_voiced = 0
        self._sound_quiet = 0
        self._gap_bytes = in_bytes_per_s * SOUND_GAP_MS // 1000
        self._awaiting_audio = manual  # manual mode: the next frame begins a user turn
        self._voiced_needed = in_bytes_per_s * policy.interrupt_min_ms // 1000
        self._limit_bytes = in_bytes_per_s * policy.max_utterance_ms // 1000
        self._quiet_needed = in_bytes_per_s * QUIET_RELEASE_MS // 1000
        self._respond_at: float | None = None  # `minSilenceMs` after the user's speech
        self._resume_at: float | None = None  # no words after a pause: resume then
        self._barge_in_item: str | None = None
        self._late_report = False
        self._actions: deque[Callable[[], Awaitable[None]]] = deque()
        self._wake = asyncio.Event()
        self._relisten()

    # --- the engine's flags -------------------------------------------------------------------
    def engine_flags(self) -> tuple[bool, bool]:
        """(auto_respond, auto_interrupt) for `set_turn_control` in the current state."""
        auto_respond = not (self.held or self.policy.gateway_responds)
        return auto_respond, not self.policy.gateway_interrupts

    async def _apply_flags(self) -> None:
        auto_respond, auto_interrupt = self.engine_flags()
        await self.engine.set_turn_control(auto_respond=auto_respond, auto_interrupt=auto_interrupt)

    # --- the client's requests (receive loop) -------------------------------------------------
    async def hold(self) -> None:
        if self.held:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                "hold: the assistant is already held; send 'allow_next' to release it",
            )
        if not self.turn_control:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED,
                f"hold: the {self.engine.name} engine cannot hold the assistant back (its "
                "provider decides on its side when the assistant answers); nothing changed",
            )
        self.held = True
        self._respond_at = None
        await self._apply_flags()
        self.side.say(P.turn_message("held"))

    async def allow_next(self, respond: bool) -> None:
        if not self.held:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "allow_next: the assistant is not held; send 'hold' first"
            )
        self.held = False
        await self._apply_flags()
        self.side.say(P.turn_message("released", "respond" if respond else None))
        if respond:
            self._do(self._respond)

    async def barge_in(self, played_ms: int | None) -> None:
        playing = self._playing
        if playing is None or not self._audible(time.monotonic()):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                "barge_in: the assistant is not speaking; there is nothing to stop",
            )
        self._barge_in_item = playing.item_id
        self.client_interrupted()
        self.side.stop_client_audio(playing.item_id)
        await self.engine.interrupt(played_ms)

    def client_interrupted(self) -> None:
        """The client stopped the assistant (`interrupt`, `barge_in`): speech over it that was
        still being judged is the user's turn now."""
        user = self._user
        if user is not None and user.over_assistant and not user.decided:
            self._take_floor(user)

    async def commit(self) -> None:
        """The client ended the user's turn (`commit`)."""
        self._utterance_bytes = 0
        if self._manual and self._muted:
            # The utterance limit already ended this turn (and committed it).
            self._muted = False
            self._awaiting_audio = True
            self._relisten()
            return
        user = self._user
        if user is not None and user.speaking:
            self.side.say(P.turn_message("user_turn_ended", "commit", _last(user.item_ids)))
            self._user = None
        self._awaiting_audio = self._manual
        self._relisten()
        await self.side.flush_pending_audio()
        await self.engine.commit()
        self._owe_reply(now=True)

    def typed(self) -> None:
        """A typed user message reached the engine."""
        self._owe_reply(now=True)

    # --- microphone audio (receive loop, only while `listening`) ------------------------------
    def feed(self, pcm: bytes) -> bool:
        """Account one microphone frame; False: do not send it to the engine."""
        if self._muted:
            return self._muted_frame(pcm)
        if self._awaiting_audio:
            self._awaiting_audio = False
            self._user = _UserTurn([], over_assistant=False)
            self.side.say(P.turn_message("user_turn_started"))
        voiced = _voiced(pcm)
        if self._judging:
            self._sound_grew(len(pcm), voiced)
        if self._limit_bytes and self._utterance_grew(len(pcm), voiced) > self._limit_bytes:
            self._end_utterance()
            return False
        user = self._user
        if user is None or not user.speaking:
            self._relisten()
            return True
        if user.over_assistant and not user.decided and user.voiced_bytes < self._voiced_needed:
            if voiced:
                user.voiced_bytes += len(pcm)
            if user.voiced_bytes >= self._voiced_needed:
                self._weigh(user)
        return True

    def _sound_grew(self, n: int, voiced: bool) -> None:
        if voiced:
            self._sound_voiced += n
            self._sound_quiet = 0
        else:
            self._sound_quiet += n
            if self._sound_quiet >= self._gap_bytes:
                self._sound_voiced = 0

    def _muted_frame(self, pcm: bytes) -> bool:
        if self._manual:
            return False  # until the client's `commit`
        self._quiet_bytes = 0 if _voiced(pcm) else self._quiet_bytes + len(pcm)
        if self._quiet_bytes < self._quiet_needed:
            return False
        self._muted, self._quiet_bytes = False, 0
        self._relisten()
        return True

    def _utterance_grew(self, n: int, voiced: bool) -> int:
        """The utterance's length so far, in bytes (manual mode: all audio since the turn
        began; otherwise from the first voiced frame until a pause)."""
        if self._manual:
            self._utterance_bytes += n
            return self._utterance_bytes
        if voiced:
            self._utterance_bytes += n
            self._quiet_bytes = 0
        elif self._utterance_bytes:
            self._utterance_bytes += n
            self._quiet_bytes += n
            if self._quiet_bytes >= self._quiet_needed:
                self._utterance_bytes = self._quiet_bytes = 0
        return self._utterance_bytes

    def _end_utterance(self) -> None:
        """The user's utterance reached `maxUtteranceMs`: end the turn for the user."""
        user = self._user
        item_id = None
        if user is not None:
            if user.over_assistant and not user.decided:
                self._take_floor(user)  # that long over the assistant is no cough
            item_id = _last(user.item_ids)
        self._user = None
        self._utterance_bytes = 0
        self._muted, self._quiet_bytes = True, 0
        # An engine that only reports speech with its words (ElevenLabs) reports this
        # utterance after the end the arbiter already said: not a turn of its own.
        self._late_report = user is None and not self._manual
        self._relisten()
        self.side.say(P.turn_message("user_turn_ended", "max_utterance", item_id))
        log.info("user turn ended at the utterance limit (%d ms)", self.policy.max_utterance_ms)
        self._do(self._end_turn_upstream)

    async def _end_turn_upstream(self) -> None:
        await self.side.flush_pending_audio()
        if self.engine.capabilities.manual_turns:
            await self.engine.commit()
        # Otherwise (GPT-Live) the model ends turns itself, and refuses a commit: the sound
        # withheld from here on reaches it as silence, which ends this one.
        self._owe_reply(now=True)

    # --- what the engine reports (emit loop) --------------------------------------------------
    def user_speaking(self, speaking: bool, item_id: str | None) -> None:
        if speaking:
            self._speech_started(item_id)
        else:
            self._speech_ended(item_id)
        self._relisten()

    def _speech_started(self, item_id: str | None) -> None:
        if self._muted:
            return  # sound the limit cut off, still in flight
        if self._late_report:
            return  # the engine catching up on the utterance the limit ended
        self._respond_at = None  # speech within the pause joins the turn
        self._resume_at = None
        user = self._user
        if user is not None and user.speaking:
            return  # already under way (a manual turn the provider's VAD reports too)
        if user is not None:
            user.speaking = True  # the same barge-in candidate, speaking again
        else:
            over = self.policy.gateway_interrupts and self._audible(time.monotonic())
            user = self._user = _UserTurn([], over_assistant=over)
            if over:  # what of this sound the engine took to notice counts too
                user.voiced_bytes = self._sound_voiced
        if item_id:
            user.item_ids.append(item_id)
        self.side.say(P.turn_message("user_turn_started", item_id=item_id))
        if user.over_assistant and not user.decided and user.voiced_bytes >= self._voiced_needed:
            self._weigh(user)

    def _speech_ended(self, item_id: str | None) -> None:
        self._utterance_bytes = 0
        if self._late_report:
            self._late_report = False
            return
        user = self._user
        if user is None or not user.speaking:
            return  # the limit or a commit already ended it
        user.speaking = False
        self.side.say(P.turn_message("user_turn_ended", "silence", item_id))
        if user.over_assistant and not user.decided:
            playing = self._playing
            if playing is not None and playing.paused_at is not None:
                # Paused for it: wait (briefly) for its words.
                self._resume_at = time.monotonic() + self.policy.false_interruption_ms / 1000
                self._wake.set()
                return
            if self._audible(time.monotonic()):
                self._user = None  # too short to be a barge-in: a cough, a click
                log.debug("user sound over the assistant ignored: %d bytes voiced",
                          user.voiced_bytes)  # fmt: skip
                return
        self._user = None
        self._owe_reply()

    def user_transcript(self, item_id: str, text: str, final: bool) -> None:
        user = self._user
        if user is None or not user.over_assistant or user.decided:
            return
        if user.item_ids and item_id not in user.item_ids:
            return  # a late transcript of an earlier turn
        user.words = max(user.words, self.policy.meaningful_words(text))
        user.heard_any = user.heard_any or bool(words(text))
        if user.voiced_bytes >= self._voiced_needed:
            self._weigh(user)
        if final and not user.decided and not user.speaking and self._user is user:
            self._dismiss(user, "backchannel" if user.heard_any else "no_words")

    def assistant_started(self, item_id: str) -> None:
        """The first audio of an item went to the client."""
        if self._playing is not None and self._playing.item_id == item_id:
            return
        self._playing = _Playing(item_id, time.monotonic())
        self.side.say(P.turn_message("assistant_turn_started", item_id=item_id))

    def assistant_interrupted(self, item_id: str) -> None:
        playing = self._playing
        if playing is None or playing.item_id != item_id or playing.cut:
            return
        playing.cut = True
        playing.paused_at = None
        reason = "barge_in" if self._barge_in_item == item_id else "interrupted"
        self._end_assistant(playing, reason)

    def response_done(self, status: str) -> None:
        """The engine finished the reply; its turn ends once the client has played it out
        (estimated), so an app drawing the floor sees the assistant while it is heard."""
        playing = self._playing
        if playing is None or playing.generated:
            return
        playing.generated = True
        playing.end_reason = status
        self._wake.set()

    def _played_out_at(self, playing: _Playing) -> float | None:
        """When the client will have played the whole item (None: not known yet, or paused)."""
        if not playing.generated or playing.paused_at is not None:
            return None
        sent_s = self.side.sent_ms(playing.item_id) / 1000
        return playing.started + playing.paused_s + sent_s + PLAYBACK_SLACK_S

    def _end_assistant(self, playing: _Playing, reason: str) -> None:
        if not playing.ended:
            playing.ended = True
            self.side.say(P.turn_message("assistant_turn_ended", reason, playing.item_id))

    # --- judging speech over the assistant ----------------------------------------------------
    def _weigh(self, user: _UserTurn) -> None:
        """Voiced long enough: a barge-in with enough words, else pause and wait for them."""
        now = time.monotonic()
        if not self._audible(now):
            self._take_floor(user)  # the assistant finished meanwhile: a plain turn
            return
        playing = self._playing
        assert playing is not None
        if user.words >= self.policy.interrupt_min_words:
            self._take_floor(user)
            self._interrupt(playing, now)
        elif playing.paused_at is None:
            playing.paused_at = now
            self.side.say(P.turn_message("assistant_paused", "user_speech", playing.item_id))

    def _take_floor(self, user: _UserTurn) -> None:
        """The speech over the assistant is the user's turn: it gets a reply when it ends."""
        user.decided = True
        user.over_assistant = False
        self._resume_at = None
        if not user.speaking and self._user is user:
            self._user = None
            self._owe_reply()
        self._relisten()

    def _interrupt(self, playing: _Playing, now: float) -> None:
        played = self._played_ms(playing, now)
        self.side.stop_client_audio(playing.item_id)

        async def interrupt() -> None:
            await self.engine.interrupt(played)

        self._do(interrupt)

    def _dismiss(self, user: _UserTurn, reason: str) -> None:
        """Not a barge-in after all: resume the assistant, and no reply."""
        user.decided = True
        if self._user is user:
            self._user = None
        self._resume_at = None
        playing = self._playing
        if playing is not None and playing.paused_at is not None:
            playing.paused_s += time.monotonic() - playing.paused_at
            playing.paused_at = None
            self.side.say(P.turn_message("assistant_resumed", reason, playing.item_id))
            self._wake.set()  # its end of playback moved
        log.debug("user sound over the assistant was no barge-in (%s)", reason)
        self._relisten()

    def _audible(self, now: float) -> bool:
        """Whether the client may still be playing the assistant (a pause holds it)."""
        playing = self._playing
        if playing is None or playing.cut:
            return False
        played_out = self._played_out_at(playing)
        return played_out is None or now < played_out

    def _played_ms(self, playing: _Playing, now: float) -> int:
        """What the listener heard, estimated: real time since its first audio, less pauses."""
        until = playing.paused_at if playing.paused_at is not None else now
        heard = (until - playing.started - playing.paused_s) * 1000
        return int(max(0.0, min(heard, self.side.sent_ms(playing.item_id))))

    # --- replies ------------------------------------------------------------------------------
    def _owe_reply(self, *, now: bool = False) -> None:
        """A user turn is over: ask for the reply, unless the engine answers by itself or the
        assistant is held. `minSilenceMs` defers it (speech meanwhile joins the turn)."""
        if not (self.turn_control and self.policy.gateway_responds) or self.held:
            return
        if self.policy.min_silence_ms and not now:
            self._respond_at = time.monotonic() + self.policy.min_silence_ms / 1000
            self._wake.set()
        else:
            self._do(self._respond)

    async def _respond(self) -> None:
        playing = self._playing
        if playing is not None and playing.paused_at is not None and not playing.cut:
            # A new reply replaces the one the client holds paused.
            self.side.stop_client_audio(playing.item_id)
            await self.engine.interrupt(self._played_ms(playing, time.monotonic()))
        await self.engine.respond()

    # --- the arbiter's own task ---------------------------------------------------------------
    def _do(self, action: Callable[[], Awaitable[None]]) -> None:
        self._actions.append(action)
        self._wake.set()

    def _relisten(self) -> None:
        user = self._user
        self.listening = (
            self._muted
            or self._awaiting_audio
            or self._judging
            or bool(self._limit_bytes)
            or (user is not None and user.speaking and user.over_assistant and not user.decided)
        )

    async def run(self) -> None:
        """Run the engine calls decided on, in order, and act when a deadline passes."""
        while True:
            while self._actions:
                await self._actions.popleft()()
            self._wake.clear()
            deadlines = [d for d in (self._respond_at, self._resume_at) if d is not None]
            playing = self._playing
            if playing is not None and not playing.ended and not playing.cut:
                if (played_out := self._played_out_at(playing)) is not None:
                    deadlines.append(played_out)
            try:
                async with asyncio.timeout_at(_loop_time(min(deadlines)) if deadlines else None):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._deadlines_passed(time.monotonic())

    def _deadlines_passed(self, now: float) -> None:
        playing = self._playing
        if playing is not None and not playing.ended and not playing.cut:
            played_out = self._played_out_at(playing)
            if played_out is not None and now >= played_out:
                self._end_assistant(playing, playing.end_reason or "completed")
        if self._respond_at is not None and now >= self._respond_at:
            self._respond_at = None
            if not self.held:
                self._do(self._respond)
        if self._resume_at is not None and now >= self._resume_at:
            self._resume_at = None
            user = self._user
            if user is not None and not user.speaking and not user.decided:
                self._dismiss(user, "backchannel" if user.heard_any else "no_words")


def _voiced(pcm: bytes) -> bool:
    """Louder than `VOICE_DBFS` (mean square, no log: it runs per frame while weighing)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    if not len(x):
        return False
    return float(np.dot(x, x)) / len(x) > _VOICE_MEAN_SQUARE


_VOICE_MEAN_SQUARE = (32768.0 * 10 ** (VOICE_DBFS / 20.0)) ** 2


def _last(items: Sequence[str]) -> str | None:
    return items[-1] if items else None


def _loop_time(monotonic_deadline: float) -> float:
    """A `time.monotonic()` deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())


__all__ = ["FloorSide", "TurnArbiter", "TurnPolicy", "words"]
