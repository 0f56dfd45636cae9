"""The OpenAI-compatible endpoint: existing OpenAI Realtime (GA) clients use voxgate as a drop-in.

`GET /v1/realtime?model=...` (WebSocket) speaks the OpenAI Realtime GA protocol unchanged; the
gateway dials OpenAI with *its own* key and relays events both ways (`relay`). What the client
gains over talking to OpenAI directly: the provider key never leaves the server, and voxgate's
auth, origin checks, session caps, rate/size limits, timeouts, metrics and stored transcripts
all apply. `POST /v1/realtime/client_secrets` (`client_secrets`) passes an authenticated user's
request through to OpenAI, signed with the server key, so browser code written for ephemeral
keys keeps working.
"""
