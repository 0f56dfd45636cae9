"""ElevenLabs Conversational AI ("Agents") behind the engine seam.

- `engine`: `ElevenLabsEngine`, one provider conversation per session (how the seam maps onto
  the provider is explained there).
- `config`: `ElevenLabsConfig`, the few settings the engine and the signed-URL call read.
- `signed_url`: where a conversation socket goes (signed URL for a private agent, else public).
- `wire`: the provider's message shapes and facts (audio formats, close codes), shared with the
  simulator in `voxgate.testing.elevenlabs_sim`.
"""

from voxgate.engines.elevenlabs.config import ElevenLabsConfig
from voxgate.engines.elevenlabs.engine import ElevenLabsEngine
from voxgate.engines.elevenlabs.signed_url import SignedUrlError, fetch_signed_url
from voxgate.engines.elevenlabs.wire import FORMAT_RATES

__all__ = [
    "FORMAT_RATES",
    "ElevenLabsConfig",
    "ElevenLabsEngine",
    "SignedUrlError",
    "fetch_signed_url",
]
