"""OpenAI Realtime (GA): the `openai` engine and what the OpenAI-compatible relay shares with it.

- `engine`: `OpenAIRealtimeEngine`, the provider behind the `ConversationEngine` seam.
- `config`: `OpenAIConfig`, the few settings the engine reads.
- `dial`: one way to open a Realtime socket with the server's key (engine and relay).
- `rest`: one way to mint ephemeral client secrets with the server's key (both token routes).
"""
