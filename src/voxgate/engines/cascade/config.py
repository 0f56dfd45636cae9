"""What the cascade reads from the settings: one frozen view per part, built once.

Each part's view lives with the part (`vad.VadConfig`, `stt.SttConfig`, ...) and says which
variant runs and why (`describe`) and whether it can run here (`problem`); the parts never see
the whole `Settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from voxgate.engines.cascade.responder import ResponderConfig
from voxgate.engines.cascade.stt import SttConfig
from voxgate.engines.cascade.tts import TtsConfig
from voxgate.engines.cascade.vad import VadConfig

if TYPE_CHECKING:
    from pydantic import SecretStr

    from voxgate.config import Settings


def _secret(value: SecretStr | None) -> str | None:
    return (value.get_secret_value() or None) if value is not None else None


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    vad: VadConfig
    stt: SttConfig
    responder: ResponderConfig
    tts: TtsConfig
    #: Ignore user speech this long after assistant audio starts (speaker echo guard).
    echo_guard_ms: int
    #: The process-wide inference pool's size (the first session of a process creates it).
    inference_workers: int = 0
    inference_queue: int = 4

    @classmethod
    def from_settings(cls, s: Settings) -> CascadeConfig:
        openai_key = _secret(s.openai_api_key)
        return cls(
            vad=VadConfig(
                kind=s.vad,
                aggressiveness=s.vad_aggressiveness,
                silence_ms=s.vad_silence_ms,
                prefix_ms=s.vad_prefix_ms,
                silero_model_path=s.silero_model_path,
            ),
            stt=SttConfig(
                kind=s.stt,
                grammar_path=s.stt_grammar,
                whisper_model_path=s.whisper_model_path,
                openai_api_base=s.openai_api_base,
                openai_api_key=openai_key,
                openai_model=s.openai_transcription_model,
            ),
            responder=ResponderConfig(
                llm_url=s.llm_url,
                model=s.llm_model,
                api_key=_secret(s.llm_api_key),
                read_timeout_s=s.first_byte_timeout_s,
            ),
            tts=TtsConfig(
                kind=s.tts,
                espeak_bin=s.espeak_bin,
                espeak_voice=s.tts_voice,
                openai_api_base=s.openai_api_base,
                openai_api_key=openai_key,
                openai_voice=s.openai_voice,
                piper_voice_path=s.piper_voice_path,
            ),
            echo_guard_ms=s.echo_guard_ms,
            inference_workers=s.inference_workers,
            inference_queue=s.inference_queue,
        )

    def describe_parts(self) -> dict[str, str]:
        """Which variant does each job, and why: `voxgate serve` logs this at startup."""
        return {
            "vad": self.vad.describe(),
            "stt": self.stt.describe(),
            "responder": self.responder.describe(),
            "tts": self.tts.describe(),
        }

    def problem(self) -> str | None:
        """The first part that would make `start()` fail, as an actionable sentence, in the
        order `start()` builds them (text-to-speech first: a missing espeak-ng is the most
        likely fault on a new machine)."""
        return self.tts.problem() or self.vad.problem() or self.stt.problem()


__all__ = ["CascadeConfig"]
