"""Voice activity detection: a per-frame speech classifier plus a turn segmenter.

The classifier answers "is this frame speech?" (webrtcvad by default, Silero via onnxruntime as
an option); the segmenter turns those answers into speech start / end events with hysteresis,
prefix padding (so the first syllable reaches the recogniser) and a silence hangover (so a
short pause inside a sentence does not end the turn). Per-frame work is a few microseconds for
webrtcvad, so it runs inline on the event loop.
"""

from __future__ import annotations

import collections
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from voxgate.engines.base import EngineUnavailable, TurnDetectionOptions

if TYPE_CHECKING:
    from voxgate.config import VadKind

#: The engine's native input rate: both webrtcvad and pocketsphinx's model want 16 kHz.
VAD_RATE = 16000

_NO_ONNXRUNTIME = (
    "Silero VAD needs onnxruntime, which is not installed: run "
    "`pip install 'voxgate[silero]'` (or set VOXGATE_VAD=webrtc)"
)


def _no_silero_model(model_path: str | None) -> str:
    return (
        f"Silero VAD model file not found ({model_path or 'VOXGATE_SILERO_MODEL unset'}): "
        "download silero_vad.onnx and set VOXGATE_SILERO_MODEL to its path "
        "(or set VOXGATE_VAD=webrtc)"
    )


@dataclass(frozen=True, slots=True)
class VadConfig:
    """The voice activity detector's settings (a turn's own `turnDetection` may override the
    timings and the sensitivity)."""

    kind: VadKind
    aggressiveness: int
    silence_ms: int
    prefix_ms: int
    silero_model_path: str | None

    def describe(self) -> str:
        if self.kind == "silero":
            return f"silero (VOXGATE_VAD=silero, model {self.silero_model_path or 'unset'})"
        return (
            f"webrtcvad (aggressiveness {self.aggressiveness}, "
            f"hangover {self.silence_ms} ms, prefix {self.prefix_ms} ms)"
        )

    def problem(self) -> str | None:
        """Why this detector cannot run here, or None. Cheap: nothing is imported or loaded."""
        if self.kind != "silero":
            return None
        if importlib.util.find_spec("onnxruntime") is None:
            return _NO_ONNXRUNTIME
        path = self.silero_model_path
        if not path or not Path(path).is_file():
            return _no_silero_model(path)
        return None


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


class SileroClassifier:
    """Silero VAD (v5 ONNX) run with onnxruntime alone: the `silero-vad` package pulls torch,
    which is far too heavy for an optional extra, but its ONNX file needs nothing else."""

    name = "silero"
    _WINDOW = 512  # samples per call at 16 kHz (32 ms), fixed by the model
    _CONTEXT = 64  # v5 prepends the tail of the previous window

    def __init__(self, model_path: str | None, threshold: float = 0.5) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise EngineUnavailable(_NO_ONNXRUNTIME, retryable=False) from exc
        if not model_path or not Path(model_path).is_file():
            raise EngineUnavailable(_no_silero_model(model_path), retryable=False)
        options = onnxruntime.SessionOptions()
        # One voice session must not eat every core of a shared machine.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            model_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._threshold = threshold
        self.frame_bytes = self._WINDOW * 2
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, self._CONTEXT), dtype=np.float32)

    def is_speech(self, frame: bytes) -> bool:
        x = (np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0).reshape(1, -1)
        x = np.concatenate([self._context, x], axis=1)
        out, self._state = self._session.run(
            None, {"input": x, "state": self._state, "sr": np.array(VAD_RATE, dtype=np.int64)}
        )
        self._context = x[:, -self._CONTEXT :]
        return float(out[0][0]) >= self._threshold


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
                events.append(VadEvent("speech", frame))
                self._silent_run = 0 if voiced else self._silent_run + 1
                if self._silent_run >= self.silence_frames:
                    self.in_speech = False
                    self._silent_run = 0
                    events.append(VadEvent("end"))
        return events

    def force_end(self) -> None:
        """The turn was ended from outside (manual commit): start listening afresh."""
        self.in_speech = False
        self._silent_run = 0
        self._prefix.clear()
        self._recent.clear()


def make_classifier(config: VadConfig, threshold: float | None) -> FrameClassifier:
    """The configured classifier; `threshold` (0..1, from `turnDetection`) maps onto webrtcvad's
    aggressiveness 0..3 or Silero's probability threshold."""
    if config.kind == "silero":
        return SileroClassifier(
            config.silero_model_path, threshold if threshold is not None else 0.5
        )
    aggressiveness = config.aggressiveness
    if threshold is not None:
        aggressiveness = min(3, max(0, round(threshold * 3)))
    return WebRtcClassifier(aggressiveness)


def make_segmenter(config: VadConfig, turn: TurnDetectionOptions) -> TurnSegmenter:
    """The session's segmenter: the configured detector, with the session's own turn timings
    where its `turnDetection` gives them."""
    return TurnSegmenter(
        make_classifier(config, turn.threshold),
        silence_ms=turn.silence_ms if turn.silence_ms is not None else config.silence_ms,
        prefix_ms=turn.prefix_ms if turn.prefix_ms is not None else config.prefix_ms,
    )
