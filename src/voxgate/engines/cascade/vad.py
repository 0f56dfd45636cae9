"""Voice activity detection: a per-frame speech classifier plus a turn segmenter.

The classifier answers "is this frame speech?" (Silero VAD's packaged ONNX model by default,
webrtcvad as the fallback); the segmenter turns those answers into speech start / end events
with hysteresis, prefix padding (so the first syllable reaches the recogniser) and a silence
hangover (so a breath inside a sentence does not end the turn). Per-frame work is a few
microseconds for webrtcvad and about a quarter of a millisecond for Silero (one 32 ms window
through a tiny network), so both run inline on the event loop: handing every frame to a thread
would cost more than the inference.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from voxgate.engines.base import EngineUnavailable, TurnDetectionOptions
from voxgate.engines.cascade.models import (
    ModelLoadError,
    has_module,
    packaged_silero_model,
    shared_model,
    warn_fallback,
)

if TYPE_CHECKING:
    from voxgate.config import VadKind

#: The engine's native input rate: Silero, webrtcvad, Whisper and pocketsphinx all want 16 kHz.
VAD_RATE = 16000

_NO_ONNXRUNTIME = (
    "Silero VAD needs onnxruntime, which is not installed: run "
    "`pip install 'voxgate[local]'` (or set VOXGATE_VAD=webrtc)"
)
_NO_PACKAGED_SILERO = (
    "no Silero VAD model: the silero-vad package is not installed "
    "(`pip install --no-deps silero-vad`, as scripts/setup.sh does) and VOXGATE_SILERO_MODEL "
    "is unset"
)


def _no_silero_model(model_path: str) -> str:
    return (
        f"the Silero VAD model file {model_path} does not exist: set VOXGATE_SILERO_MODEL to "
        "silero_vad.onnx, or unset it for the packaged model (or set VOXGATE_VAD=webrtc)"
    )


@dataclass(frozen=True, slots=True)
class VadChoice:
    kind: str  # "silero" | "webrtc"
    model: str | None
    why: str
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class VadConfig:
    """The voice activity detector's settings (a turn's own `turnDetection` may override the
    timings and the sensitivity)."""

    kind: VadKind
    aggressiveness: int
    silence_ms: int
    prefix_ms: int
    silero_model_path: str | None

    def _silero(self) -> tuple[str | None, str | None]:
        if not has_module("onnxruntime"):
            return None, _NO_ONNXRUNTIME
        if self.silero_model_path:
            if not Path(self.silero_model_path).is_file():
                return None, _no_silero_model(self.silero_model_path)
            return self.silero_model_path, None
        packaged = packaged_silero_model()
        return (str(packaged), None) if packaged else (None, _NO_PACKAGED_SILERO)

    def choice(self) -> VadChoice:
        """Cheap: nothing is imported or loaded."""
        if self.kind == "webrtc":
            return VadChoice("webrtc", None, "VOXGATE_VAD=webrtc")
        model, reason = self._silero()
        source = "VOXGATE_SILERO_MODEL" if self.silero_model_path else "packaged model"
        if self.kind == "silero":
            return VadChoice("silero", model, f"{source}, VOXGATE_VAD=silero", reason)
        if model is None:
            return VadChoice("webrtc", None, f"fallback: {reason}")
        return VadChoice("silero", model, f"{source}, VOXGATE_VAD=auto")

    def describe(self) -> str:
        c = self.choice()
        timing = f"hangover {self.silence_ms} ms, prefix {self.prefix_ms} ms"
        if c.kind == "silero":
            return f"silero {c.model} ({timing}; {c.why})"
        return f"webrtcvad (aggressiveness {self.aggressiveness}, {timing}; {c.why})"

    def problem(self) -> str | None:
        """Why this detector cannot run here, or None. Cheap: nothing is imported or loaded."""
        return self.choice().problem


class FrameClassifier(Protocol):
    """Says whether one fixed-size frame of 16 kHz PCM16 is speech."""

    name: str
    frame_bytes: int

    def is_speech(self, frame: bytes) -> bool: ...

    def reset(self) -> None: ...


class WebRtcClassifier:
    """webrtcvad (GMM-based, tiny, no model file): 20 ms frames at 16 kHz, behind an energy floor.

    webrtcvad has its own built-in overhang: after speech it keeps answering "speech" for
    60-100 ms even on digital silence. That would silently lengthen the configured hangover, so
    a frame quieter than `floor_dbfs` is silence whatever webrtcvad says (real speech at a
    working microphone is 30-50 dB above that).
    """

    name = "webrtc"

    def __init__(self, aggressiveness: int = 2, frame_ms: int = 20, floor_dbfs: float = -60.0):
        import webrtcvad

        if frame_ms not in (10, 20, 30):
            raise ValueError("webrtcvad frames are 10, 20 or 30 ms")
        self._vad = webrtcvad.Vad(int(aggressiveness))
        self.frame_bytes = VAD_RATE * frame_ms // 1000 * 2
        # Compare mean squares, not dB: no log per frame.
        n = self.frame_bytes // 2
        self._floor_sum_sq = n * (32768.0 * 10 ** (floor_dbfs / 20.0)) ** 2

    def is_speech(self, frame: bytes) -> bool:
        x = np.frombuffer(frame, dtype="<i2").astype(np.float32)
        if float(np.dot(x, x)) < self._floor_sum_sq:
            # Still run webrtcvad so its internal state follows the audio.
            self._vad.is_speech(frame, VAD_RATE)
            return False
        return bool(self._vad.is_speech(frame, VAD_RATE))

    def reset(self) -> None:
        """webrtcvad keeps no state between frames worth dropping."""


def _load_silero(path: str) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # One thread: a 32 ms window is far too small to split, and the loop runs it inline.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = {i.name for i in session.get_inputs()}
    if not {"input", "state", "sr"} <= names:
        raise ValueError(f"not a Silero VAD v5+ model (its inputs are {sorted(names)})")
    return session


class SileroClassifier:
    """Silero VAD (v5/v6 ONNX) run with onnxruntime alone: the `silero-vad` package itself pulls
    torch, far too heavy for a gateway, but its ONNX file needs nothing else. One loaded model
    serves every session of the process (onnxruntime sessions are thread-safe and the
    recurrent state is passed in, so each session keeps only its own 1 KB of state).

    Hysteresis on the probability, as Silero's own iterator does: a frame starts counting as
    speech at `threshold` and keeps counting until the probability drops below
    `threshold - 0.15`, so a soft syllable inside a word is not a pause.
    """

    name = "silero"
    _WINDOW = 512  # samples per call at 16 kHz (32 ms), fixed by the model
    _CONTEXT = 64  # v5 prepends the tail of the previous window
    HYSTERESIS = 0.15

    def __init__(self, model_path: str, threshold: float = 0.5) -> None:
        self._session = shared_model("Silero VAD", model_path, lambda: _load_silero(model_path))
        self._threshold = threshold
        self._low = max(0.01, threshold - self.HYSTERESIS)
        self._sr = np.array(VAD_RATE, dtype=np.int64)
        self.frame_bytes = self._WINDOW * 2
        self.last_probability = 0.0
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._x = np.zeros((1, self._CONTEXT + self._WINDOW), dtype=np.float32)
        self._speaking = False

    def is_speech(self, frame: bytes) -> bool:
        x = self._x
        x[0, : self._CONTEXT] = x[0, -self._CONTEXT :]  # the previous window's tail
        x[0, self._CONTEXT :] = np.frombuffer(frame, dtype="<i2")
        x[0, self._CONTEXT :] *= 1.0 / 32768.0
        out, self._state = self._session.run(
            None, {"input": x, "state": self._state, "sr": self._sr}
        )
        p = float(out[0][0])
        self.last_probability = p
        self._speaking = p >= (self._low if self._speaking else self._threshold)
        return self._speaking


@dataclass(slots=True)
class VadEvent:
    """`start` carries the padded audio since just before speech began; `speech` is one frame
    inside a turn; `end` fires after the silence hangover."""

    kind: str  # "start" | "speech" | "end"
    audio: bytes = b""


class TurnSegmenter:
    """Speech start/end with hysteresis over a frame classifier.

    Start: `start_frames` voiced frames within the last `start_window` frames (one loud click is
    not a turn). End: `silence_ms` of continuous non-speech. Audio before the start (up to
    `prefix_ms`) is handed over with the start event.
    """

    def __init__(
        self,
        classifier: FrameClassifier,
        *,
        silence_ms: int = 400,
        prefix_ms: int = 300,
        start_ms: int = 60,
    ) -> None:
        self.classifier = classifier
        self.frame_bytes = classifier.frame_bytes
        frame_ms = self.frame_bytes // 2 * 1000 // VAD_RATE
        self.frame_ms = frame_ms
        self.silence_frames = max(1, -(-silence_ms // frame_ms))
        self.start_frames = max(1, -(-start_ms // frame_ms))
        self.start_window = self.start_frames + 2
        self._prefix: collections.deque[bytes] = collections.deque(
            maxlen=max(self.start_window, prefix_ms // frame_ms + self.start_window)
        )
        self._recent: collections.deque[bool] = collections.deque(maxlen=self.start_window)
        self._buffer = b""
        self.in_speech = False
        self._silent_run = 0

    @property
    def silent_ms(self) -> int:
        """How long the current turn has been silent (0 while the user is talking)."""
        return self._silent_run * self.frame_ms

    def reset(self) -> None:
        self._prefix.clear()
        self._recent.clear()
        self._buffer = b""
        self.in_speech = False
        self._silent_run = 0
        self.classifier.reset()

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Classify whole frames of `pcm` (keeping any remainder) and return the events."""
        buf = self._buffer + pcm if self._buffer else pcm
        n = len(buf) - len(buf) % self.frame_bytes
        self._buffer = buf[n:]
        events: list[VadEvent] = []
        fb = self.frame_bytes
        for i in range(0, n, fb):
            frame = buf[i : i + fb]
            voiced = self.classifier.is_speech(frame)
            if not self.in_speech:
                self._prefix.append(frame)
                self._recent.append(voiced)
                if voiced and sum(self._recent) >= self.start_frames:
                    self.in_speech = True
                    self._silent_run = 0
                    events.append(VadEvent("start", b"".join(self._prefix)))
                    self._prefix.clear()
                    self._recent.clear()
            else:
                self._silent_run = 0 if voiced else self._silent_run + 1
                if self._silent_run >= self.silence_frames:
                    # The frame that completes the hangover is silence the recogniser does not
                    # need (and `silent_ms` already reads 0 for the next turn).
                    self.in_speech = False
                    self._silent_run = 0
                    events.append(VadEvent("end"))
                else:
                    events.append(VadEvent("speech", frame))
        return events

    def force_end(self) -> None:
        """The turn was ended from outside (manual commit): start listening afresh."""
        self.in_speech = False
        self._silent_run = 0
        self._prefix.clear()
        self._recent.clear()


def make_classifier(config: VadConfig, threshold: float | None) -> tuple[FrameClassifier, str]:
    """The configured classifier and the line saying which one runs and why; `threshold` (0..1,
    from `turnDetection`) maps onto webrtcvad's aggressiveness 0..3 or Silero's probability
    threshold. Blocking on the first call of a process (the model loads once)."""
    choice = config.choice()
    if choice.problem:
        raise EngineUnavailable(choice.problem, retryable=False)
    if choice.kind == "silero":
        assert choice.model is not None
        try:
            silero = SileroClassifier(choice.model, threshold if threshold is not None else 0.5)
            return silero, config.describe()
        except ModelLoadError as exc:
            if config.kind != "auto":
                raise EngineUnavailable(
                    f"{exc}: fix VOXGATE_SILERO_MODEL (or set VOXGATE_VAD=webrtc)",
                    retryable=False,
                ) from exc
            fallback = f"{exc}; using webrtcvad instead"
            warn_fallback("vad", fallback)
            why = f"webrtcvad (aggressiveness {config.aggressiveness}; fallback: {fallback})"
            return _webrtc(config, threshold), why
    return _webrtc(config, threshold), config.describe()


def _webrtc(config: VadConfig, threshold: float | None) -> WebRtcClassifier:
    aggressiveness = config.aggressiveness
    if threshold is not None:
        aggressiveness = min(3, max(0, round(threshold * 3)))
    return WebRtcClassifier(aggressiveness)


def make_segmenter(config: VadConfig, turn: TurnDetectionOptions) -> tuple[TurnSegmenter, str]:
    """The session's segmenter: the configured detector, with the session's own turn timings
    where its `turnDetection` gives them."""
    classifier, why = make_classifier(config, turn.threshold)
    segmenter = TurnSegmenter(
        classifier,
        silence_ms=turn.silence_ms if turn.silence_ms is not None else config.silence_ms,
        prefix_ms=turn.prefix_ms if turn.prefix_ms is not None else config.prefix_ms,
    )
    return segmenter, why
