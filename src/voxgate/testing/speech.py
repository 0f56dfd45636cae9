"""Real speech for tests and simulators: espeak-ng rendered to PCM16 mono at any rate.

Tests and the provider simulators need audio that a VAD and a recogniser treat as speech, so we
synthesise it instead of shipping WAV files. Results are cached: the same phrase is rendered once
per process, which keeps suites that speak the same sentences many times fast.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

from voxgate.audio import bytes_for_ms, read_wav, resample

ESPEAK_BIN = "espeak-ng"


@lru_cache(maxsize=256)
def synthesize(text: str, rate: int = 24000) -> bytes:
    """`text` spoken by espeak-ng as PCM16 LE mono at `rate` Hz (cached per (text, rate))."""
    binary = shutil.which(ESPEAK_BIN)
    if binary is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng")
    # `--` so a phrase starting with '-' is never taken for an option.
    proc = subprocess.run(
        [binary, "--stdout", "--", text], capture_output=True, check=True, timeout=60
    )
    pcm, src_rate = read_wav(proc.stdout)
    return resample(pcm, src_rate, rate)


def silence(ms: float, rate: int) -> bytes:
    """`ms` milliseconds of digital silence as PCM16 mono at `rate`."""
    return b"\x00" * bytes_for_ms(ms, rate)


__all__ = ["silence", "synthesize"]
