// Public types of @voxgate/client: options, wire messages, events. No runtime code here, so
// importing types never pulls browser globals into a server bundle.

import type { VoxgateError } from "./errors";

/** Connection state of the client (and of the gateway's engine, while connected). */
export type ConnectionStatus = "disconnected" | "connecting" | "connected" | "reconnecting";

/**
 * What audio the session has: "full" (microphone + speaker), "playback" (speaker only, e.g.
 * the microphone was denied), "text" (no audio), "starting" (worklets loading, microphone
 * permission pending) or "none" (stopped).
 */
export type AudioMode = "full" | "playback" | "text" | "starting" | "none";

export type TurnMode = "server_vad" | "manual";

export type Role = "user" | "assistant";

/** Error codes of the voxgate protocol (docs/protocol.md §6) plus the client's own. */
export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden_origin"
  | "session_limit"
  | "rate_limited"
  | "timeout"
  | "session_expired"
  | "payload_too_large"
  | "upstream_unavailable"
  | "upstream_error"
  | "engine_unavailable"
  | "unsupported"
  | "internal"
  // client-side codes
  | "disconnected"
  | "not_started"
  | "stopped"
  | "connect_failed"
  // unknown codes a newer gateway may send pass through unchanged
  | (string & {});

export interface Capabilities {
  audioIn: boolean;
  audioOut: boolean;
  tools: boolean;
  serverVad: boolean;
  /** The gateway can steer this engine's turns: `hold()`, `minSilenceMs` and the
   * interruption policy work (OpenAI, cascade). Absent from older gateways. */
  turnControl?: boolean;
}

/** The gateway's turn arbiter for this session (`session_ready.turnTaking`). */
export interface TurnTaking {
  /** "engine": the engine stops the assistant when it hears the user (the client flushes on
   * `user_speaking`); "gateway": the gateway judges speech over the assistant and pauses,
   * resumes or interrupts it. */
  interruption: "engine" | "gateway";
  /** `hold()` is available. */
  hold: boolean;
  minSilenceMs: number;
  maxUtteranceMs: number;
  interruptMinMs: number;
  interruptMinWords: number;
  backchannels: string[];
  falseInterruptionMs: number;
}

/** What a `turn` event reports (docs/protocol.md, `turn`). */
export type TurnEventName =
  | "user_turn_started"
  | "user_turn_ended"
  | "assistant_turn_started"
  | "assistant_turn_ended"
  | "assistant_paused"
  | "assistant_resumed"
  | "held"
  | "released";

/** Who has the floor, as `turn` events draw it. */
export type Floor = "idle" | "user" | "assistant" | "paused";

export interface AudioFormat {
  format: "pcm16";
  rate: number;
}

/** The gateway's `session_ready` message. */
export interface SessionReady {
  type: "session_ready";
  sessionId: string;
  conversationId: string;
  engine: string;
  protocol: number;
  capabilities: Capabilities;
  inputAudio: AudioFormat;
  outputAudio: AudioFormat;
  binary: boolean;
  /** Absent from gateways older than the turn arbiter. */
  turnTaking?: TurnTaking;
  /** The tools the model may call: the gateway's, then this page's (`registerTool`). */
  tools?: string[];
}

/** A tool this page offers the model (`registerTool`). */
export interface ToolDefinition {
  /** What the tool does, for the model. */
  description?: string;
  /** JSON Schema of the arguments object. Default: no arguments. */
  parameters?: Record<string, unknown>;
}

/** Runs one call of a page tool: gets the model's arguments (already checked against the
 * schema), returns the result (any JSON value, or a promise of one). A throw is the call's
 * error, which the model reads. */
export type ToolHandler = (
  args: Record<string, unknown>,
  call: { callId: string; name: string },
) => unknown;

export type ToolStatus = "running" | "done" | "error" | "cancelled";

export interface Personality {
  playfulness?: number;
  empathy?: number;
  humor?: number;
  intelligence?: number;
  supportiveness?: number;
}

export interface TurnDetection {
  mode: TurnMode;
  /** 0..1, engine-specific sensitivity. */
  threshold?: number;
  /** Silence that ends a turn, 20..10000 ms. */
  silenceMs?: number;
  /** Audio kept before detected speech, 0..5000 ms. */
  prefixMs?: number;
  /** The pause after the user's speech before the assistant answers, 0..10000 ms. */
  minSilenceMs?: number;
  /** A user turn longer than this is ended for the user: 0 (no limit) or 1000..600000 ms. */
  maxUtteranceMs?: number;
  /** Voiced audio over the assistant before it yields, 0..5000 ms. */
  interruptMinMs?: number;
  /** Words (not backchannels) over the assistant before it is stopped, 0..20. */
  interruptMinWords?: number;
  /** Words that never stop the assistant ("mm-hmm", "yeah"…). */
  backchannels?: string[];
  /** How long to wait for words before a paused assistant resumes, 200..10000 ms. */
  falseInterruptionMs?: number;
}

export type SampleRate = 8000 | 16000 | 22050 | 24000 | 32000 | 44100 | 48000;

/** Options of `start()`: the protocol's `start` message plus what the browser side needs. */
export interface StartOptions {
  /** Engine name, where the server allows a choice (`VOXGATE_ALLOWED_ENGINES`). */
  engine?: string;
  /** The engine's model, for engines that take one (openai: its realtime model), within the
   * gateway's `VOXGATE_ALLOWED_MODELS` and your token's `models` claim. */
  model?: string;
  instructions?: string;
  voice?: string;
  personality?: Personality;
  /** "manual" = push-to-talk. Default "server_vad" (hands-free). */
  turnDetection?: TurnMode | Partial<TurnDetection>;
  /** Microphone audio rate sent to the gateway. Default 24000. */
  inputRate?: SampleRate;
  /** Assistant audio rate asked of the gateway. Default 24000. */
  outputRate?: SampleRate;
  /** Resume a stored conversation. */
  conversationId?: string;
  /** Your own data for the session; the gateway passes it to the engine. */
  metadata?: Record<string, unknown>;
  /** Capture the microphone (false = type in, hear out). Default true. */
  microphone?: boolean;
  /** Play the assistant's audio. Default true. */
  playback?: boolean;
  echoCancellation?: boolean;
  noiseSuppression?: boolean;
  autoGainControl?: boolean;
  /** A specific microphone (`MediaDeviceInfo.deviceId`). */
  deviceId?: string;
}

/**
 * A bearer token, or a function returning one. A function is called before EVERY connection
 * (the first one and each reconnect), which is what single-use session tokens from
 * `POST /api/realtime/session` need: a used one cannot open the next connection.
 */
export type TokenSource = string | null | (() => string | null | Promise<string | null>);

export interface ReconnectPolicy {
  /** Attempts before giving up. Default 5. */
  attempts: number;
  /** First delay. Default 1000 ms; doubles per attempt. */
  baseMs: number;
  /** Cap on the delay. Default 30000 ms. */
  maxMs: number;
}

/** How the AudioWorklet modules are loaded. */
export type WorkletSource =
  /** Built into the package and loaded from a Blob URL: no bundler or server configuration. */
  | "inline"
  /** Loaded from this base URL (`<base>/capture-worklet.js`, `<base>/playback-worklet.js`);
   * use it when a Content-Security-Policy forbids `blob:` worklets. */
  | { baseUrl: string | URL };

export interface ClientOptions {
  /** ws(s):// or http(s):// URL of the gateway's /ws endpoint. Default: this page's host. */
  url?: string;
  token?: TokenSource;
  reconnect?: Partial<ReconnectPolicy>;
  /** Playback prebuffer. Default 80 ms. */
  prebufferMs?: number;
  /** Socket bytes queued before microphone audio pauses. Default 65536. */
  bufferedAmountLimit?: number;
  /** Time allowed for the handshake up to `session_ready`. Default 15000 ms. */
  startTimeoutMs?: number;
  /** Keep-alive ping interval; 0 disables. Default 20000 ms. */
  pingIntervalMs?: number;
  /** Audio still sent after a push-to-talk release. Default 150 ms. */
  pttTailMs?: number;
  /** Microphone audio kept from before `session_ready` (people talk at once). Default 3000 ms. */
  earlyAudioMs?: number;
  /** Server messages and sent messages kept in `client.debug`. Default 300. */
  eventLogSize?: number;
  worklets?: WorkletSource;
  /** For tests and non-browser runtimes: the WebSocket constructor to use. */
  WebSocket?: WebSocketConstructor;
}

/** The part of the WebSocket constructor the client uses (so tests can pass a fake). */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[]): WebSocket;
  readonly CONNECTING: number;
  readonly OPEN: number;
  readonly CLOSING: number;
  readonly CLOSED: number;
}

// -------------------------------------------------------------------------------- events

export interface StatusEvent {
  type: "status";
  status: ConnectionStatus;
  reason: string | null;
}
export interface ReadyEvent {
  type: "ready";
  session: SessionReady;
}
export interface TranscriptEvent {
  type: "transcript";
  role: Role;
  itemId: string;
  /** Everything so far for this item: show this, never concatenate deltas. */
  text: string;
  delta: string;
  final: boolean;
}
export interface SpeakingEvent {
  type: "speaking";
  /** The assistant is talking: audio generated at the gateway or still playing here. */
  isSpeaking: boolean;
}
export interface UserSpeakingEvent {
  type: "user_speaking";
  isSpeaking: boolean;
}
export interface ResponseDoneEvent {
  type: "response_done";
  responseId?: string;
  status?: "completed" | "cancelled" | "failed";
  usage?: Record<string, unknown>;
}
export interface InterruptedEvent {
  type: "interrupted";
  /** true for this client's own `interrupt()`, false when the gateway reports a cut. */
  local: boolean;
  itemId: string | null;
  /** What the listener heard of the item, in milliseconds. */
  playedMs: number | undefined;
}
export interface VoxgateErrorEvent {
  type: "error";
  code: ErrorCode;
  message: string;
  /** The session is over. */
  fatal: boolean;
  /** Raised by the client itself (e.g. a lost connection), not sent by the gateway. */
  local?: boolean;
  error: VoxgateError;
}
export interface ServerStatusEvent {
  type: "server_status";
  status: ConnectionStatus;
  reason?: string;
}
export interface BackpressureEvent {
  type: "backpressure";
  paused: boolean;
  /** "server": the gateway drops assistant audio; "network": our socket is congested. */
  source: "server" | "network" | null;
}
export type AudioUnavailableReason =
  | "insecure_context"
  | "no_web_audio"
  | "worklet_failed"
  | "microphone_denied"
  | "microphone_failed"
  | "microphone_ended";
export interface AudioUnavailableEvent {
  type: "audio_unavailable";
  reason: AudioUnavailableReason;
  /** A sentence to show the user. */
  message: string;
  mode: AudioMode;
}
export interface AudioStateEvent {
  type: "audio_state";
  state: AudioContextState;
  mode?: AudioMode;
}
export interface LevelEvent {
  /** Microphone level, every other 20 ms frame: for meters, not for React state. */
  type: "level";
  rms: number;
}
export interface ReconnectingEvent {
  type: "reconnecting";
  attempt: number;
  attempts: number;
  delayMs: number;
}
export interface TalkingEvent {
  type: "talking";
  /** Push-to-talk is held. */
  active: boolean;
}
export interface PongEvent {
  type: "pong";
  id?: string | number;
}
export interface TurnEvent {
  type: "turn";
  event: TurnEventName;
  reason?: string;
  itemId?: string;
  /** The floor after this event. */
  floor: Floor;
  /** The assistant is held (`hold()`) after this event. */
  held: boolean;
}
/** The model called one of this page's tools (its handler runs next). */
export interface ToolCallEvent {
  type: "tool_call";
  callId: string;
  name: string;
  arguments: Record<string, unknown>;
}
/** How a tool call goes, server tools included: `running`, then `done`, `error` or `cancelled`. */
export interface ToolStatusEvent {
  type: "tool_status";
  callId: string;
  name: string;
  status: ToolStatus;
  /** Milliseconds since the call started. */
  ms: number;
  error?: string;
}
export interface PlaybackFlushedEvent {
  type: "playback_flushed";
  at: number;
  wasPlaying: boolean;
}

/** Every event a listener gets; switch on `type` and TypeScript narrows the rest. */
export type VoxgateEvent =
  | StatusEvent
  | ReadyEvent
  | TranscriptEvent
  | SpeakingEvent
  | UserSpeakingEvent
  | ResponseDoneEvent
  | InterruptedEvent
  | VoxgateErrorEvent
  | ServerStatusEvent
  | BackpressureEvent
  | AudioUnavailableEvent
  | AudioStateEvent
  | LevelEvent
  | ReconnectingEvent
  | TalkingEvent
  | PongEvent
  | TurnEvent
  | ToolCallEvent
  | ToolStatusEvent
  | PlaybackFlushedEvent;

export type VoxgateEventType = VoxgateEvent["type"];
export type EventOfType<T extends VoxgateEventType> = Extract<VoxgateEvent, { type: T }>;
export type Listener<E = VoxgateEvent> = (event: E) => void;

/** What `interrupt()` resolves to: the item cut and how much of it was heard. */
export interface InterruptResult {
  itemId: string | null;
  playedMs: number | undefined;
}

/**
 * The conversation seam of the original design: what a `RealTimeConversation` component
 * drives, whichever engine is behind it. `VoxgateClient` implements it.
 */
export interface ConversationEngine {
  start(options?: StartOptions): Promise<SessionReady | null>;
  stop(): Promise<void>;
  sendUserMessage(text: string): Promise<void>;
  sendContextUpdate(context: Record<string, unknown>): void;
  /** Listen to every event, or to one type; returns the function that unsubscribes. */
  on(listener: Listener): () => void;
  on<T extends VoxgateEventType>(type: T, listener: Listener<EventOfType<T>>): () => void;
  readonly status: ConnectionStatus;
  readonly isSpeaking: boolean;
  readonly capabilities: Capabilities | null;
}

// --------------------------------------------------------------- gateway -> client messages

/** Messages the gateway sends (JSON text frames), as the connection parses them. */
export type ServerMessage =
  | SessionReady
  | { type: "status"; status: ConnectionStatus; reason?: string }
  | { type: "speaking"; isSpeaking: boolean; itemId?: string }
  | { type: "user_speaking"; isSpeaking: boolean }
  | { type: "transcript"; role: Role; itemId: string; text?: string; delta?: string; final?: boolean }
  | { type: "audio"; chunkBase64: string; itemId?: string }
  | { type: "response_done"; responseId?: string; status?: "completed" | "cancelled" | "failed"; usage?: Record<string, unknown> }
  | { type: "interrupted"; itemId?: string; playedMs?: number }
  | { type: "error"; code: ErrorCode; message: string; fatal?: boolean }
  | { type: "pong"; id?: string | number }
  | { type: "backpressure"; paused: boolean }
  | { type: "turn"; event: TurnEventName; reason?: string; itemId?: string }
  | { type: "tool_call"; callId: string; name: string; arguments: Record<string, unknown> }
  | { type: "tool_status"; callId: string; name: string; status: ToolStatus; ms: number; error?: string };

/** Messages the client sends (JSON text frames; audio goes as binary frames). */
export type ClientMessage =
  | ({ type: "start"; binary: boolean; inputRate: number; outputRate: number; turnDetection: TurnDetection } & Pick<
      StartOptions,
      "engine" | "model" | "instructions" | "voice" | "personality" | "metadata" | "conversationId"
    > & { tools?: Array<{ name: string; description: string; parameters: Record<string, unknown> }> })
  | { type: "commit" }
  | { type: "user_message"; text: string }
  | { type: "context_update"; payload: Record<string, unknown> }
  | { type: "interrupt"; playedMs?: number }
  | { type: "hold" }
  | { type: "allow_next"; respond: boolean }
  | { type: "barge_in"; playedMs?: number }
  | { type: "stop" }
  | { type: "ping"; id?: string | number }
  | { type: "tool_result"; callId: string; output?: unknown; error?: string };
