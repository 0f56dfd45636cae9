"""voxgate: a realtime voice-conversation gateway."""

__version__ = "0.1.0"
