"""The offline-capable cascade engine: VAD -> speech-to-text -> responder -> text-to-speech.

Each part is swappable by configuration (`config.CascadeConfig`, one view per part, says which
variant runs and why); `engine.CascadeEngine` wires them behind the `ConversationEngine` seam.
"""
