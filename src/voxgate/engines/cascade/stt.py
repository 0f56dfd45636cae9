"""Speech-to-text for the cascade: pocketsphinx (offline, default), OpenAI transcription, or
faster-whisper.

A recogniser sees one utterance at a time: `begin()`, `feed()` while the user speaks, then
`finish()` for the final text. Pocketsphinx decodes incrementally on a private worker thread as
audio arrives, so by the end of the silence hangover almost all the work is done and `finish()`
costs a few milliseconds; the batch back ends (OpenAI, whisper) buffer and decode at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from voxgate.audio import wav_bytes
from voxgate.engines.base import EngineUnavailable

if TYPE_CHECKING:
    from voxgate.config import SttKind

log = logging.getLogger("voxgate.cascade")

STT_RATE = 16000

_NO_KEY = "VOXGATE_STT=openai needs OPENAI_API_KEY: set it (or set VOXGATE_STT=pocketsphinx)"
_NO_FASTER_WHISPER = (
    "faster-whisper is not installed: run `pip install 'voxgate[whisper]'` "
    "(or set VOXGATE_STT=pocketsphinx)"
)


def _no_grammar(path: str) -> str:
    return f"the JSGF grammar file {path} does not exist: fix VOXGATE_STT_GRAMMAR"


def _no_whisper_model(path: str | None) -> str:
    return (
        f"the whisper model was not found ({path or 'VOXGATE_WHISPER_MODEL unset'}): "
        "set VOXGATE_WHISPER_MODEL to a local faster-whisper model directory"
    )


@dataclass(frozen=True, slots=True)
class SttConfig:
    """Which recogniser, and what each kind needs."""

    kind: SttKind
    #: pocketsphinx: a JSGF grammar that constrains it (exact transcripts for known phrases).
    grammar_path: str | None
    whisper_model_path: str | None
    openai_api_base: str
    openai_api_key: str | None = field(repr=False)
    openai_model: str

    def describe(self) -> str:
        if self.kind == "openai":
            return f"openai {self.openai_model} at {self.openai_api_base} (VOXGATE_STT=openai)"
        if self.kind == "whisper":
            return f"faster-whisper {self.whisper_model_path} (VOXGATE_STT=whisper)"
        grammar = f", JSGF grammar {self.grammar_path}" if self.grammar_path else ""
        return f"pocketsphinx, offline (VOXGATE_STT=pocketsphinx{grammar})"

    def problem(self) -> str | None:
        """Why this recogniser cannot run here, or None. Cheap: no import, no model load."""
        if self.kind == "openai":
            return None if self.openai_api_key else _NO_KEY
        if self.kind == "whisper":
            if importlib.util.find_spec("faster_whisper") is None:
                return _NO_FASTER_WHISPER
            path = self.whisper_model_path
            return None if path and Path(path).exists() else _no_whisper_model(path)
        grammar = self.grammar_path
        return _no_grammar(grammar) if grammar and not Path(grammar).is_file() else None


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


class WhisperRecognizer(_BufferedRecognizer):
    """faster-whisper with a local model directory (optional extra `voxgate[whisper]`)."""

    name = "whisper"

    def __init__(self, model_path: str | None) -> None:
        super().__init__()
        try:
            import faster_whisper
        except ImportError as exc:
            raise EngineUnavailable(_NO_FASTER_WHISPER, retryable=False) from exc
        if not model_path or not Path(model_path).exists():
            raise EngineUnavailable(_no_whisper_model(model_path), retryable=False)
        self._module = faster_whisper
        self._path = model_path
        self._model: Any = None

    async def prepare(self) -> None:
        def load() -> object:
            return self._module.WhisperModel(self._path, device="cpu", compute_type="int8")

        self._model = await asyncio.to_thread(load)

    async def _transcribe(self, pcm16: bytes) -> str:
        import numpy as np

        audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0

        def run() -> str:
            segments, _info = self._model.transcribe(audio, language="en", beam_size=1)
            return " ".join(seg.text.strip() for seg in segments)

        return await asyncio.to_thread(run)


def make_recognizer(config: SttConfig) -> Recognizer:
    if config.kind == "pocketsphinx":
        return PocketSphinxRecognizer(config.grammar_path)
    if config.kind == "whisper":
        return WhisperRecognizer(config.whisper_model_path)
    if not config.openai_api_key:
        raise EngineUnavailable(_NO_KEY, retryable=False)
    return OpenAITranscriber(config.openai_api_base, config.openai_api_key, config.openai_model)
