"""One `Settings` object, read from the environment and `.env`.

Every variable is documented in docs/configuration.md (a test holds that page to the types,
defaults and ranges here) and starts with `VOXGATE_`, except the provider keys
(`OPENAI_API_KEY`, `ELEVENLABS_API_KEY`) and the OpenAI model and voice, which keep the names
the providers' own SDKs use, so an operator's existing environment works unchanged.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CsvList = Annotated[list[str], NoDecode]

#: The cascade's swappable parts. A misspelt name fails at startup, naming the allowed values,
#: rather than when the first session starts.
#: `auto` picks the best part installed (Whisper, Piper, Silero from the `local` extra) and falls
#: back to the always-installed one (pocketsphinx, espeak-ng, webrtcvad), saying why; naming a
#: part makes it required.
SttKind = Literal["auto", "whisper", "pocketsphinx", "openai"]
TtsKind = Literal["auto", "piper", "espeak", "openai"]
VadKind = Literal["auto", "silero", "webrtc"]

#: Words that, said over the assistant, acknowledge it rather than take the floor (the turn
#: arbiter's default `backchannels`; hyphenated entries also match their parts, "mm hmm").
DEFAULT_BACKCHANNELS = (
    "mm-hmm", "mhm", "mm", "hmm", "uh-huh", "yeah", "yep", "right", "okay", "ok",
)  # fmt: skip


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())



def data_dir() -> Path:
    """voxgate's per-user data directory (`~/.local/share/voxgate` on Linux, honouring
    `XDG_DATA_HOME`; `~/Library/Application Support/voxgate` on macOS; `%LOCALAPPDATA%/voxgate`
    on Windows)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("voxgate", appauthor=False))


def default_database_url() -> str:
    return f"sqlite+aiosqlite:///{data_dir() / 'voxgate.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- server -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", validation_alias=_env("VOXGATE_HOST"))
    port: int = Field(8000, validation_alias=_env("VOXGATE_PORT"))
    engine: str = Field("cascade", validation_alias=_env("VOXGATE_ENGINE"))
    #: Engines a client may pick with `start.engine`; empty = only the configured `engine`.
    allowed_engines: CsvList = Field(
        default_factory=list, validation_alias=_env("VOXGATE_ALLOWED_ENGINES")
    )
    log_level: str = Field("info", validation_alias=_env("VOXGATE_LOG_LEVEL"))
    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("VOXGATE_LOG_FORMAT"))
    #: Serve even on a non-loopback host with `VOXGATE_AUTH=none` (the `--insecure` flag).
    insecure: bool = Field(False, validation_alias=_env("VOXGATE_INSECURE"))
    shutdown_deadline_s: float = Field(10.0, validation_alias=_env("VOXGATE_SHUTDOWN_DEADLINE_S"))
    #: A request's headers must arrive whole within this many seconds of connecting (or of the
    #: previous response on a kept-alive connection): slow-header clients hold no socket longer.
    header_timeout_s: float = Field(10.0, gt=0, validation_alias=_env("VOXGATE_HEADER_TIMEOUT_S"))
    #: Open connections (HTTP and WebSocket) the process keeps; more are closed on arrival.
    #: Keep it under the process's file-descriptor limit (`ulimit -n`).
    max_connections: int = Field(2048, ge=16, validation_alias=_env("VOXGATE_MAX_CONNECTIONS"))
    #: permessage-deflate on WebSocket links (client and upstream). Off: PCM barely deflates
    #: and compression costs CPU on every frame (docs/benchmarks.md).
    ws_compression: bool = Field(False, validation_alias=_env("VOXGATE_WS_COMPRESSION"))
    #: Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (comma-separated
    #: addresses or networks, `*` for any): the reverse proxy in front. Rate limits and logs
    #: key on the client address, which behind a proxy is otherwise the proxy's for everyone.
    forwarded_allow_ips: str = Field(
        "127.0.0.1,::1", validation_alias=_env("VOXGATE_FORWARDED_ALLOW_IPS")
    )

    # --- several gateway processes (shared state) ---------------------------------------------
    #: Redis shared by every gateway process (`redis://host:6379/0`): session tokens, session
    #: caps, rate limits, the session directory, circuit breakers and the node registry hold
    #: across processes. Unset: all of it lives in this one process's memory.
    redis_url: str | None = Field(None, validation_alias=_env("VOXGATE_REDIS_URL"))
    #: While Redis is unreachable, admit new sessions without the shared caps and rate limits
    #: (they still need Redis for session tokens). Off: new admissions are refused (503/4503).
    redis_fail_open: bool = Field(False, validation_alias=_env("VOXGATE_REDIS_FAIL_OPEN"))
    #: This process's name in the node registry and the session directory; unset: host:pid:random.
    node_name: str | None = Field(None, max_length=128, validation_alias=_env("VOXGATE_NODE_NAME"))

    # --- OpenAI Realtime --------------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_realtime_model: str = Field(
        "gpt-realtime", validation_alias=_env("OPENAI_REALTIME_MODEL")
    )
    openai_voice: str = Field("alloy", validation_alias=_env("OPENAI_VOICE"))
    openai_url: str = Field(
        "wss://api.openai.com/v1/realtime", validation_alias=_env("VOXGATE_OPENAI_URL")
    )
    openai_api_base: str = Field(
        "https://api.openai.com/v1", validation_alias=_env("VOXGATE_OPENAI_API_BASE")
    )
    openai_transcription_model: str = Field(
        "gpt-4o-mini-transcribe", validation_alias=_env("VOXGATE_OPENAI_TRANSCRIPTION_MODEL")
    )
    #: Recycle the upstream session this long after it started (OpenAI ends sessions at 60 min).
    openai_session_recycle_s: float = Field(
        55 * 60.0, validation_alias=_env("VOXGATE_OPENAI_SESSION_RECYCLE_S")
    )

    # --- OpenAI GPT-Live ----------------------------------------------------------------------
    openai_live_model: str = Field("gpt-live-1", validation_alias=_env("OPENAI_LIVE_MODEL"))
    #: The primary session socket; the model goes in `session.start`, never in the URL.
    openai_live_url: str = Field(
        "wss://api.openai.com/v1/live/sessions", validation_alias=_env("VOXGATE_OPENAI_LIVE_URL")
    )
    #: The Responses model GPT-Live delegates to when the session has tools.
    openai_live_tools_model: str = Field(
        "gpt-5-mini", validation_alias=_env("VOXGATE_OPENAI_LIVE_TOOLS_MODEL")
    )

    # --- ElevenLabs -------------------------------------------------------------------------
    elevenlabs_api_key: SecretStr | None = Field(None, validation_alias=_env("ELEVENLABS_API_KEY"))
    elevenlabs_agent_id: str | None = Field(
        None, validation_alias=_env("VOXGATE_ELEVENLABS_AGENT_ID")
    )
    elevenlabs_url: str = Field(
        "wss://api.elevenlabs.io/v1/convai/conversation",
        validation_alias=_env("VOXGATE_ELEVENLABS_URL"),
    )
    elevenlabs_api_base: str = Field(
        "https://api.elevenlabs.io/v1", validation_alias=_env("VOXGATE_ELEVENLABS_API_BASE")
    )

    # --- cascade ------------------------------------------------------------------------------
    llm_url: str | None = Field(None, validation_alias=_env("VOXGATE_LLM_URL"))
    llm_model: str = Field("gpt-4o-mini", validation_alias=_env("VOXGATE_LLM_MODEL"))
    llm_api_key: SecretStr | None = Field(None, validation_alias=_env("VOXGATE_LLM_API_KEY"))
    #: `auto` (Whisper, else pocketsphinx), `whisper`, `pocketsphinx` or `openai`.
    stt: SttKind = Field("auto", validation_alias=_env("VOXGATE_STT"))
    #: A JSGF grammar file that constrains pocketsphinx (exact transcripts for a known phrase set).
    stt_grammar: str | None = Field(None, validation_alias=_env("VOXGATE_STT_GRAMMAR"))
    whisper_model_path: str | None = Field(None, validation_alias=_env("VOXGATE_WHISPER_MODEL"))
    #: `auto` (Piper, else espeak-ng), `piper`, `espeak` or `openai`.
    tts: TtsKind = Field("auto", validation_alias=_env("VOXGATE_TTS"))
    #: A local Piper voice (.onnx, its .onnx.json next to it) instead of the packaged one.
    piper_voice_path: str | None = Field(None, validation_alias=_env("VOXGATE_PIPER_VOICE"))
    tts_voice: str = Field("en-us", validation_alias=_env("VOXGATE_TTS_VOICE"))
    espeak_bin: str = Field("espeak-ng", validation_alias=_env("VOXGATE_ESPEAK_BIN"))
    #: `auto` (Silero, else webrtcvad), `silero` or `webrtc`.
    vad: VadKind = Field("auto", validation_alias=_env("VOXGATE_VAD"))
    vad_aggressiveness: int = Field(2, ge=0, le=3, validation_alias=_env("VOXGATE_VAD_AGGRESSIVENESS"))
    vad_silence_ms: int = Field(500, ge=20, validation_alias=_env("VOXGATE_VAD_SILENCE_MS"))
    vad_prefix_ms: int = Field(300, ge=0, validation_alias=_env("VOXGATE_VAD_PREFIX_MS"))
    silero_model_path: str | None = Field(None, validation_alias=_env("VOXGATE_SILERO_MODEL"))
    #: Ignore user speech this long after assistant audio starts (speaker echo guard).
    echo_guard_ms: int = Field(300, ge=0, validation_alias=_env("VOXGATE_ECHO_GUARD_MS"))
    #: Threads running local model inference (Whisper, Piper), shared by all sessions; 0 = one
    #: per core.
    inference_workers: int = Field(0, ge=0, validation_alias=_env("VOXGATE_INFERENCE_WORKERS"))
    #: Inference requests allowed to wait for a worker; beyond that a request is refused
    #: (`rate_limited`) instead of stalling every session.
    inference_queue: int = Field(4, ge=0, validation_alias=_env("VOXGATE_INFERENCE_QUEUE"))

    # --- turn-taking (the gateway's arbiter; a session's `start.turnDetection` overrides) ------
    #: The pause after the user's speech before the assistant may answer; speech within it
    #: joins the same turn. 0: the engine's own end-of-turn silence decides (as before).
    turn_min_silence_ms: int = Field(
        0, ge=0, le=10_000, validation_alias=_env("VOXGATE_TURN_MIN_SILENCE_MS")
    )
    #: A user turn longer than this (audio time) is ended for the user; 0 = no limit.
    turn_max_utterance_ms: int = Field(
        0, ge=0, le=600_000, validation_alias=_env("VOXGATE_TURN_MAX_UTTERANCE_MS")
    )
    #: Voiced user audio over the assistant needed before it yields; 0 with
    #: VOXGATE_TURN_INTERRUPT_MIN_WORDS=0: the engine stops at speech start (as before).
    turn_interrupt_min_ms: int = Field(
        0, ge=0, le=5_000, validation_alias=_env("VOXGATE_TURN_INTERRUPT_MIN_MS")
    )
    #: Words (not backchannels) the user must say over the assistant before it is stopped.
    turn_interrupt_min_words: int = Field(
        0, ge=0, le=20, validation_alias=_env("VOXGATE_TURN_INTERRUPT_MIN_WORDS")
    )
    turn_backchannels: CsvList = Field(
        default_factory=lambda: list(DEFAULT_BACKCHANNELS),
        validation_alias=_env("VOXGATE_TURN_BACKCHANNELS"),
    )
    #: After user speech paused the assistant, how long to wait for words before resuming it.
    turn_false_interruption_ms: int = Field(
        1500, ge=200, le=10_000, validation_alias=_env("VOXGATE_TURN_FALSE_INTERRUPTION_MS")
    )

    # --- storage ------------------------------------------------------------------------------
    #: Default: a SQLite file in the user's data directory, never the working directory: a
    #: `voxgate conversations list` run from elsewhere must find the same conversations, not
    #: silently create an empty file where it stands.
    database_url: str = Field(
        default_factory=lambda: default_database_url(),
        validation_alias=_env("VOXGATE_DATABASE_URL"),
    )
    audio_log_dir: str | None = Field(None, validation_alias=_env("VOXGATE_AUDIO_LOG_DIR"))
    #: Delete conversations (turns and audio) this many days after their last activity;
    #: 0 keeps them until deleted. Checked hourly (sooner for retentions under ten hours).
    retention_days: float = Field(0.0, ge=0, validation_alias=_env("VOXGATE_RETENTION_DAYS"))
    #: Stored conversations one user may have; at the quota, new sessions are refused until
    #: some are deleted (or expire). 0 = no quota.
    max_conversations_per_user: int = Field(
        1000, ge=0, validation_alias=_env("VOXGATE_MAX_CONVERSATIONS_PER_USER")
    )

    # --- security -----------------------------------------------------------------------------
    auth: Literal["none", "jwt"] = Field("none", validation_alias=_env("VOXGATE_AUTH"))
    jwt_secret: SecretStr | None = Field(None, validation_alias=_env("VOXGATE_JWT_SECRET"))
    #: Users (JWT `sub`) allowed on the admin routes when auth is on; a JWT with `admin: true`
    #: is admin too.
    admin_users: CsvList = Field(default_factory=list, validation_alias=_env("VOXGATE_ADMIN_USERS"))
    allowed_origins: CsvList = Field(
        default_factory=list, validation_alias=_env("VOXGATE_ALLOWED_ORIGINS")
    )
    session_token_ttl_s: int = Field(60, validation_alias=_env("VOXGATE_SESSION_TOKEN_TTL_S"))
    #: `POST /api/realtime/session` calls per minute per user (per client address when anonymous).
    token_requests_per_min: int = Field(
        10, ge=1, validation_alias=_env("VOXGATE_TOKEN_REQUESTS_PER_MIN")
    )
    #: A bearer token for `/metrics`, `/api/realtime/metrics` and `/ws/status` (Prometheus
    #: scrapers), besides an admin JWT. With auth on, those routes need one or the other.
    metrics_token: SecretStr | None = Field(None, validation_alias=_env("VOXGATE_METRICS_TOKEN"))

    # --- the OpenAI-compatible endpoints (what they may spend) --------------------------------
    #: Models `/v1/realtime` and `POST /v1/realtime/client_secrets` may use; empty = the
    #: configured realtime and transcription models.
    allowed_models: CsvList = Field(
        default_factory=list, validation_alias=_env("VOXGATE_ALLOWED_MODELS")
    )
    #: Longest `instructions` a compatible client may set, in characters.
    max_instructions_chars: int = Field(
        16_000, ge=0, validation_alias=_env("VOXGATE_MAX_INSTRUCTIONS_CHARS")
    )
    #: Most tools a compatible client may attach to a session or a response.
    max_tools: int = Field(32, ge=0, validation_alias=_env("VOXGATE_MAX_TOOLS"))
    #: Longest lifetime of a client secret minted through voxgate (OpenAI allows 10-7200 s).
    client_secret_max_ttl_s: int = Field(
        600, ge=10, le=7200, validation_alias=_env("VOXGATE_CLIENT_SECRET_MAX_TTL_S")
    )

    # --- tools the model may call --------------------------------------------------------------
    #: Python modules whose `@voxgate.tool` functions are server tools.
    tools: CsvList = Field(default_factory=list, validation_alias=_env("VOXGATE_TOOLS"))
    #: A YAML or JSON file of HTTP tools.
    tools_file: str | None = Field(None, validation_alias=_env("VOXGATE_TOOLS_FILE"))
    #: MCP servers whose tools are server tools: stdio commands or streamable-HTTP URLs.
    mcp_servers: CsvList = Field(
        default_factory=list, validation_alias=_env("VOXGATE_MCP_SERVERS")
    )
    #: A tool call still running after this long makes the assistant say a short filler
    #: (engines that can); 0 turns fillers off.
    tool_filler_ms: int = Field(1500, ge=0, validation_alias=_env("VOXGATE_TOOL_FILLER_MS"))
    #: How long a tool call may take (a tool's own `timeout_s` overrides it).
    tool_timeout_s: float = Field(
        10.0, gt=0, le=600, validation_alias=_env("VOXGATE_TOOL_TIMEOUT_S")
    )

    # --- limits -------------------------------------------------------------------------------
    max_sessions: int = Field(500, validation_alias=_env("VOXGATE_MAX_SESSIONS"))
    max_sessions_per_user: int = Field(3, validation_alias=_env("VOXGATE_MAX_SESSIONS_PER_USER"))
    control_messages_per_min: int = Field(
        100, validation_alias=_env("VOXGATE_CONTROL_MESSAGES_PER_MIN")
    )
    #: Audio a client may send, as a multiple of real time (bytes per second at its input rate).
    audio_rate_multiple: float = Field(4.0, validation_alias=_env("VOXGATE_AUDIO_RATE_MULTIPLE"))
    #: Audio frames a client may send per second (empty and tiny frames cost a relay hop and a
    #: provider request each); bursts of two seconds' worth pass.
    audio_frames_per_s: int = Field(200, ge=1, validation_alias=_env("VOXGATE_AUDIO_FRAMES_PER_S"))
    max_frame_bytes: int = Field(262144, validation_alias=_env("VOXGATE_MAX_FRAME_BYTES"))
    #: Largest event on `/v1/realtime`: OpenAI accepts appends of up to 15 MiB of base64.
    compat_max_event_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, validation_alias=_env("VOXGATE_COMPAT_MAX_EVENT_BYTES")
    )
    #: Seconds of audio a `/v1/realtime` client may send at once (a recording in one go); past
    #: it, reading is paced to `audio_rate_multiple`, nothing is dropped.
    compat_audio_burst_s: float = Field(
        120.0, ge=1.0, validation_alias=_env("VOXGATE_COMPAT_AUDIO_BURST_S")
    )
    idle_timeout_s: float = Field(600.0, validation_alias=_env("VOXGATE_IDLE_TIMEOUT_S"))
    max_session_s: float = Field(7200.0, validation_alias=_env("VOXGATE_MAX_SESSION_S"))
    start_timeout_s: float = Field(15.0, validation_alias=_env("VOXGATE_START_TIMEOUT_S"))
    #: How long the upstream may stay silent after a request that should produce output.
    first_byte_timeout_s: float = Field(20.0, validation_alias=_env("VOXGATE_FIRST_BYTE_TIMEOUT_S"))
    invalid_frames_per_min: int = Field(20, validation_alias=_env("VOXGATE_INVALID_FRAMES_PER_MIN"))
    #: Outbound audio kept for a client that is not reading, in seconds of audio.
    client_buffer_s: float = Field(10.0, validation_alias=_env("VOXGATE_CLIENT_BUFFER_S"))
    #: Close a session whose client has taken nothing we sent for this long (it stopped reading).
    client_stall_timeout_s: float = Field(
        30.0, gt=0, validation_alias=_env("VOXGATE_CLIENT_STALL_TIMEOUT_S")
    )

    # --- reliability --------------------------------------------------------------------------
    reconnect_attempts: int = Field(5, validation_alias=_env("VOXGATE_RECONNECT_ATTEMPTS"))
    reconnect_base_s: float = Field(1.0, validation_alias=_env("VOXGATE_RECONNECT_BASE_S"))
    reconnect_max_s: float = Field(30.0, validation_alias=_env("VOXGATE_RECONNECT_MAX_S"))
    breaker_failures: int = Field(3, validation_alias=_env("VOXGATE_BREAKER_FAILURES"))
    breaker_cooldown_s: float = Field(30.0, validation_alias=_env("VOXGATE_BREAKER_COOLDOWN_S"))
    #: User audio kept while an engine reconnects, replayed to the new upstream (0: dropped).
    reconnect_audio_buffer_s: float = Field(
        10.0, ge=0, validation_alias=_env("VOXGATE_RECONNECT_AUDIO_BUFFER_S")
    )
    upstream_ping_interval_s: float = Field(
        20.0, validation_alias=_env("VOXGATE_UPSTREAM_PING_INTERVAL_S")
    )

    @field_validator(
        "allowed_engines", "allowed_origins", "admin_users", "allowed_models",
        "turn_backchannels", "tools", "mcp_servers", mode="before",
    )  # fmt: skip
    @classmethod
    def _split_csv(cls, value: object) -> object:
        # Comma-separated in the environment; a JSON list also works.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def is_loopback(self) -> bool:
        """True when the server binds only to the local machine."""
        if self.host in ("localhost",):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def engines_allowed_for_clients(self) -> list[str]:
        allowed = list(self.allowed_engines)
        if self.engine not in allowed:
            allowed.insert(0, self.engine)
        return allowed

    def models_allowed(self) -> list[str]:
        """Models the Realtime-compatible endpoints may use (`VOXGATE_ALLOWED_MODELS`, or the
        configured realtime and transcription models)."""
        if self.allowed_models:
            return list(self.allowed_models)
        return [self.openai_realtime_model, self.openai_transcription_model]

    def live_models_allowed(self) -> list[str]:
        """Models `/v1/live/sessions` may use (`VOXGATE_ALLOWED_MODELS`, or the configured
        GPT-Live model)."""
        if self.allowed_models:
            return list(self.allowed_models)
        return [self.openai_live_model]


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (tests, CLI flags) on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
