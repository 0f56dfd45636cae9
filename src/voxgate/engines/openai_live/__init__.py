"""OpenAI GPT-Live (`/v1/live/sessions`): the `openai-live` engine and what the compatible
endpoint shares with it.

- `engine`: `OpenAILiveEngine`, the full-duplex model behind the `ConversationEngine` seam.
- `config`: `OpenAILiveConfig`, the few settings the engine reads.
- `dial`: one way to open a GPT-Live socket with the server's key (engine and relay).
- `wire`: the events voxgate builds (`session.start`, appends) and the error codes it reads.
- `grouping`: GPT-Live's timed transcript fragments grouped into user and assistant turns.
"""
