"""The offline-capable cascade engine: VAD -> speech-to-text -> responder -> text-to-speech.

Each part is swappable by configuration; `engine.CascadeEngine` wires them behind the
`ConversationEngine` seam (see `engine.describe_parts` for what is active and why).
"""
