// The public client: joins the protocol connection (connection.ts) and audio I/O (audio.ts)
// into one voice conversation, and adds what needs both: barge-in, interrupt with the played
// milliseconds, push-to-talk, early microphone audio, backpressure, item bookkeeping for
// binary audio (which carries no item id).

import { AudioIO, type AudioSettings, type CaptureState, type PlaybackState } from "./audio";
import { ProtocolConnection, asVoxgateError } from "./connection";
import { VoxgateError } from "./errors";
import type {
  AudioMode,
  Capabilities,
  ClientMessage,
  ClientOptions,
  ConnectionStatus,
  ConversationEngine,
  EventOfType,
  Floor,
  InterruptResult,
  Listener,
  ReconnectPolicy,
  ServerMessage,
  SessionReady,
  StartOptions,
  TokenSource,
  ToolDefinition,
  ToolHandler,
  TurnDetection,
  TurnMode,
  TurnTaking,
  VoxgateEvent,
  VoxgateEventType,
  WebSocketConstructor,
} from "./types";
import { resolveSocketUrl } from "./url";

type NormalizedOptions = Omit<StartOptions, "turnDetection"> &
  AudioSettings & { turnDetection: TurnDetection };

type Logged = { t: number } & Record<string, unknown>;

/** Live numbers for dashboards and tests (the gateway's page exposes them as `window.voxgateDebug`). */
export interface ClientDebug {
  readonly playback: PlaybackState;
  readonly capture: CaptureState;
  interruptRequestedAt: number | null;
  lastInterrupt: (InterruptResult & { requestedAt: number }) | null;
  audioDropped: number;
  audioReceivedBytes: number;
  readonly reconnects: number;
  /** The last server messages (audio payloads left out). */
  events: Logged[];
  /** The last control messages sent. */
  sent: Logged[];
}

/**
 * One voice conversation with a voxgate gateway.
 *
 * ```ts
 * const client = new VoxgateClient({ url: "wss://voice.example.com/ws", token: getToken });
 * client.on("transcript", (e) => console.log(e.role, e.text, e.final));
 * await client.start();            // call from a click: asks for the microphone
 * await client.interrupt();
 * await client.stop();
 * ```
 */
export class VoxgateClient implements ConversationEngine {
  readonly url: string;
  readonly reconnectPolicy: ReconnectPolicy;
  readonly bufferedAmountLimit: number;
  readonly pttTailMs: number;
  readonly earlyAudioMs: number;
  readonly eventLogSize: number;
  readonly debug: ClientDebug;

  private readonly connection: ProtocolConnection;
  private readonly audio: AudioIO;
  private readonly listeners = new Set<Listener>();
  private readonly WS: WebSocketConstructor;

  private _status: ConnectionStatus = "disconnected";
  private serverSpeaking = false;
  private userSpeaking = false;
  private _capabilities: Capabilities | null = null;
  private opts: NormalizedOptions | null = null;
  /** Bumps on every start/stop, so stale async work (audio setup) can tell it lost. */
  private gen = 0;
  private inputRate: number | null = null;
  private outputRate: number | null = null;

  // Item bookkeeping: binary audio carries no item id, so the client tracks which reply the
  // frames belong to, and drops audio of a reply it cut until the next reply starts.
  private assistantItem: string | null = null;
  private interruptedItems = new Set<string>();
  private pendingSeq = 0;
  private dropAudio = false;

  // Turn-taking, as the gateway's `turn` events tell it.
  private held = false;
  private userTurn = false;
  private assistantTurn = false;
  private assistantPaused = false;

  private pttActive = false;
  private pttTimer: ReturnType<typeof setTimeout> | null = null;
  private serverPaused = false;
  private localPaused = false;
  /** Microphone frames captured before `session_ready`, sent once it arrives (people talk at once). */
  private earlyFrames: ArrayBuffer[] = [];
  /** Page tools (`registerTool`), offered in every `start`. */
  private readonly tools = new Map<string, { definition: ToolDefinition; handler: ToolHandler }>();

  constructor(options: ClientOptions = {}) {
    this.url = resolveSocketUrl(options.url);
    this.reconnectPolicy = { attempts: 5, baseMs: 1000, maxMs: 30000, ...(options.reconnect ?? {}) };
    this.bufferedAmountLimit = options.bufferedAmountLimit ?? 65536;
    this.pttTailMs = options.pttTailMs ?? 150;
    this.earlyAudioMs = options.earlyAudioMs ?? 3000;
    this.eventLogSize = options.eventLogSize ?? 300;
    const WS = options.WebSocket ?? (globalThis.WebSocket as WebSocketConstructor | undefined);
    if (!WS) throw new VoxgateError("bad_request", "This environment has no WebSocket: create the client in the browser.");
    this.WS = WS;

    this.audio = new AudioIO(
      {
        frame: (pcm, rms, seq) => this.onCaptureFrame(pcm, rms, seq),
        playingChanged: () => this.speakingMaybeChanged(),
        flushed: (info) => this.emit({ type: "playback_flushed", ...info }),
        unavailable: (reason, message, mode) => this.emit({ type: "audio_unavailable", reason, message, mode }),
        audioState: (state, mode) => this.emit(mode ? { type: "audio_state", state, mode } : { type: "audio_state", state }),
      },
      { prebufferMs: options.prebufferMs ?? 80, worklets: options.worklets },
    );

    this.connection = new ProtocolConnection(
      {
        url: this.url,
        token: options.token ?? null,
        reconnect: this.reconnectPolicy,
        startTimeoutMs: options.startTimeoutMs ?? 15000,
        pingIntervalMs: options.pingIntervalMs ?? 20000,
        WebSocket: WS,
      },
      {
        startMessage: () => this.startMessage(),
        status: (status, reason) => this.setStatus(status, reason),
        ready: (session) => this.onSessionReady(session),
        message: (message) => this.onMessage(message),
        binary: (data) => this.onAudio(data, null),
        dropped: () => this.onDropped(),
        reconnecting: (info) => this.emit({ type: "reconnecting", ...info }),
        failed: (error) => this.onFailed(error),
        sent: (message) => this.logSent(message),
      },
    );

    const audio = this.audio;
    const connection = this.connection;
    this.debug = {
      get playback() {
        return audio.state.playback;
      },
      get capture() {
        return audio.state.capture;
      },
      get reconnects() {
        return connection.reconnects;
      },
      interruptRequestedAt: null,
      lastInterrupt: null,
      audioDropped: 0,
      audioReceivedBytes: 0,
      events: [],
      sent: [],
    };
  }

  // ------------------------------------------------------------------------ read-only state

  get status(): ConnectionStatus {
    return this._status;
  }

  /** The assistant is talking: audio is being generated or is still playing here. */
  get isSpeaking(): boolean {
    return this.serverSpeaking || this.audio.state.playback.isPlaying;
  }

  /** The server's voice activity detection hears the user. */
  get isUserSpeaking(): boolean {
    return this.userSpeaking;
  }

  /** `{audioIn, audioOut, tools, serverVad}` from `session_ready`, or null before it. */
  get capabilities(): Capabilities | null {
    return this._capabilities;
  }

  /** The `session_ready` of the live connection, or null. */
  get session(): SessionReady | null {
    return this.connection.session;
  }

  /** The stored conversation (resumed after reconnects; pass it to `start` to continue later). */
  get conversationId(): string | null {
    return this.connection.conversationId;
  }

  get audioMode(): AudioMode {
    return this.audio.mode;
  }

  get turnMode(): TurnMode {
    return this.opts ? this.opts.turnDetection.mode : "server_vad";
  }

  /** The gateway's turn arbiter for this session (`session_ready.turnTaking`), or null. */
  get turnTaking(): TurnTaking | null {
    return this.connection.session?.turnTaking ?? null;
  }

  /** The assistant is held (`hold()` took effect, `allowNext()` not yet). */
  get isHeld(): boolean {
    return this.held;
  }

  /** Who has the floor: "assistant" (talking), "paused" (held while the gateway judges the
   * user's speech over it), "user" (talking) or "idle". */
  get floor(): Floor {
    if (this.assistantPaused) return "paused";
    if (this.assistantTurn) return "assistant";
    if (this.userTurn) return "user";
    return "idle";
  }

  /** Push-to-talk is held. */
  get isTalking(): boolean {
    return this.pttActive;
  }

  get volume(): number {
    return this.audio.volume;
  }

  get muted(): boolean {
    return this.audio.muted;
  }

  get prebufferMs(): number {
    return this.audio.prebufferMs;
  }

  /** The token (or token function) used for the next connection. */
  get token(): TokenSource {
    return this.connection.token;
  }

  set token(value: TokenSource) {
    this.connection.token = value;
  }

  // ------------------------------------------------------------------------ events

  /** Listen to every event, or to one type. Returns the function that removes the listener. */
  on(listener: Listener): () => void;
  on<T extends VoxgateEventType>(type: T, listener: Listener<EventOfType<T>>): () => void;
  on<T extends VoxgateEventType>(a: Listener | T, b?: Listener<EventOfType<T>>): () => void {
    let listener: Listener;
    if (typeof a === "function") listener = a;
    else {
      const only = b as Listener<EventOfType<T>>;
      listener = (event) => {
        if (event.type === a) only(event as EventOfType<T>);
      };
    }
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  private emit(event: VoxgateEvent): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (err) {
        console.error("voxgate listener failed", err);
      }
    }
  }

  // ------------------------------------------------------------------------ lifecycle

  /**
   * Open the session: set up audio (falling back to text-only with a reason when the
   * microphone cannot start), connect, send `start`, wait for `session_ready`.
   * Call it from a user gesture (a click) so the browser lets audio play.
   */
  async start(options: StartOptions = {}): Promise<SessionReady | null> {
    if (this._status !== "disconnected") {
      throw new VoxgateError("bad_request", "The session is already running; stop it first.");
    }
    const opts = normalizeOptions(options);
    this.opts = opts;
    this.inputRate = null;
    this.outputRate = null;
    this.earlyFrames = [];
    const gen = ++this.gen;
    const alive = () => gen === this.gen;
    // Audio first and synchronously inside the click (autoplay rules), in parallel with the socket.
    const audioReady = this.audio.setup(opts, alive);
    let session: SessionReady;
    try {
      session = await this.connection.open(opts.conversationId ?? null);
    } catch (err) {
      await audioReady.catch(() => {});
      const error = asVoxgateError(err);
      if (alive()) {
        await this.audio.teardown();
        this.setStatus("disconnected", error.code || "connect_failed");
      }
      throw error;
    }
    await audioReady;
    return alive() ? session : null;
  }

  /** End the session cleanly (`stop`, then close); releases the microphone. Never reconnects. */
  async stop(): Promise<void> {
    this.gen += 1;
    this.clearPtt();
    this.earlyFrames = [];
    this.connection.close();
    await this.audio.teardown();
    this.resetSessionState();
    this.setStatus("disconnected", "client_stop");
  }

  /**
   * Send typed text as the user's turn (works without a microphone). A reply that is still
   * playing is interrupted first, so the server hears the interrupt before the new turn.
   */
  async sendUserMessage(text: string): Promise<void> {
    const value = String(text ?? "").trim();
    if (!value) throw new VoxgateError("bad_request", "Type a message first.");
    if (this.audio.state.playback.isPlaying) await this.interrupt();
    this.send({ type: "user_message", text: value });
  }

  /**
   * Offer the model a tool that runs in this page: every call of it runs `handler` with the
   * model's arguments and sends back what it returns (or why it threw). Register before
   * `start()`: the tools go out with it (a session already running gets them on its next
   * start). Returns the function that removes the tool. A name the gateway already uses for a
   * server tool makes `start()` fail with `bad_request`.
   */
  registerTool(name: string, definition: ToolDefinition, handler: ToolHandler): () => void {
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(String(name))) {
      throw new VoxgateError("bad_request", "A tool name is 1-64 letters, digits, '_' or '-'.");
    }
    if (typeof handler !== "function") throw new VoxgateError("bad_request", "A tool needs a handler function.");
    const entry = { definition: { ...definition }, handler };
    this.tools.set(name, entry);
    return () => {
      if (this.tools.get(name) === entry) this.tools.delete(name);
    };
  }

  private async runTool(msg: { callId: string; name: string; arguments: Record<string, unknown> }): Promise<void> {
    const tool = this.tools.get(msg.name);
    let answer: { output: unknown } | { error: string };
    if (!tool) {
      answer = { error: `this page has no tool named '${msg.name}'` };
    } else {
      try {
        const output = await tool.handler(msg.arguments ?? {}, { callId: msg.callId, name: msg.name });
        answer = { output: output === undefined ? null : output };
      } catch (err) {
        answer = { error: err instanceof Error ? err.message || err.name : String(err) };
      }
    }
    if (this.connection.session) this.send({ type: "tool_result", callId: msg.callId, ...answer });
  }

  /** Give the assistant structured context, without starting a turn. */
  sendContextUpdate(context: Record<string, unknown>): void {
    if (!context || typeof context !== "object" || Array.isArray(context)) {
      throw new VoxgateError("bad_request", "A context update must be an object.");
    }
    this.send({ type: "context_update", payload: context });
  }

  /** Manual turn end (push-to-talk): respond to what was said. */
  commit(): void {
    this.send({ type: "commit" });
  }

  /**
   * Stop the assistant now: flush local playback at once and tell the server how much of the
   * current item was heard (`playedMs`), so it can truncate the turn to that.
   */
  interrupt(): Promise<InterruptResult> {
    return this.cut("interrupt");
  }

  /**
   * Stop the assistant now, whatever the engine's own turn detection decided (`barge_in`):
   * like `interrupt()`, and speech over the assistant the gateway was still judging becomes
   * the user's turn. The gateway refuses it (a non-fatal `bad_request`) when nothing plays.
   */
  bargeIn(): Promise<InterruptResult> {
    return this.cut("barge_in");
  }

  /**
   * Keep the assistant from answering until `allowNext()`: what the user says (or types) is
   * heard and transcribed but not answered; a reply already playing finishes. Needs
   * `capabilities.turnControl` (an engine without it gets a non-fatal `unsupported` error).
   * The `turn` event `held` confirms it.
   */
  hold(): void {
    this.send({ type: "hold" });
  }

  /** Release `hold()`. `respond: true` has the assistant answer now, in one reply, everything
   * said since its last one; otherwise it answers at the end of the user's next turn. */
  allowNext(respond = false): void {
    this.send({ type: "allow_next", respond: !!respond });
  }

  private async cut(kind: "interrupt" | "barge_in"): Promise<InterruptResult> {
    const requestedAt = performance.now();
    this.debug.interruptRequestedAt = requestedAt;
    this.audio.markInterrupt();
    if (this.serverSpeaking || this.audio.hasPendingPlayback) {
      // Audio of the cancelled reply may still be on the wire: drop it until a new reply starts.
      this.dropAudio = true;
      if (this.assistantItem) this.interruptedItems.add(this.assistantItem);
    }
    const ack = await this.audio.flush();
    let itemId = this.assistantItem;
    let playedMs: number | undefined;
    const rate = this.audio.state.playback.sampleRate;
    const played = this.audio.state.playback.playedMsByItem;
    if (ack && ack.itemId && rate) {
      itemId = ack.itemId;
      playedMs = Math.round((ack.playedSamples / rate) * 1000);
    } else if (itemId && played[itemId] !== undefined) {
      playedMs = played[itemId];
    }
    if (itemId) this.interruptedItems.add(itemId);
    const message: ClientMessage = playedMs !== undefined ? { type: kind, playedMs } : { type: kind };
    if (this.connection.isOpen) this.send(message);
    this.setServerSpeaking(false);
    const info: InterruptResult = { itemId: itemId && !itemId.startsWith("pending:") ? itemId : null, playedMs };
    this.debug.lastInterrupt = { ...info, requestedAt };
    this.emit({ type: "interrupted", local: true, ...info });
    return info;
  }

  /** Push-to-talk: the talk button went down. Barges in if the assistant is talking. */
  startTalking(): void {
    if (this.turnMode !== "manual") return;
    if (this.pttTimer !== null) clearTimeout(this.pttTimer);
    this.pttTimer = null;
    if (this.pttActive) return;
    if (this.isSpeaking) void this.interrupt();
    this.pttActive = true;
    this.emit({ type: "talking", active: true });
  }

  /** Push-to-talk: the talk button came up. Sends a short tail of audio, then `commit`. */
  stopTalking(): void {
    if (this.turnMode !== "manual" || !this.pttActive || this.pttTimer !== null) return;
    this.pttTimer = setTimeout(() => {
      this.pttTimer = null;
      this.pttActive = false;
      this.emit({ type: "talking", active: false });
      if (this.connection.isOpen) this.commit();
    }, this.pttTailMs);
  }

  /**
   * Switch between hands-free ("server_vad") and push-to-talk ("manual"). While connected this
   * restarts the session on the same conversation, because turn detection is fixed per session.
   */
  async setTurnMode(mode: TurnMode): Promise<void> {
    const next: TurnMode = mode === "manual" ? "manual" : "server_vad";
    if (!this.opts) this.opts = normalizeOptions({});
    if (this.opts.turnDetection.mode === next) return;
    this.opts.turnDetection = { ...this.opts.turnDetection, mode: next };
    this.clearPtt();
    if (this._status === "connected") {
      await this.audio.flush();
      this.resetSessionState();
      await this.connection.restart("turn_mode");
    }
  }

  /** Playback volume, 0..1. */
  setVolume(volume: number): void {
    this.audio.configure({ volume: Math.max(0, Math.min(1, Number(volume))) });
  }

  /** Mute or unmute the assistant's audio (it keeps playing silently, so timing stays right). */
  setMuted(muted: boolean): void {
    this.audio.configure({ muted: !!muted });
  }

  /** Playback prebuffer in milliseconds (default 80). */
  setPrebufferMs(ms: number): void {
    this.audio.configure({ prebufferMs: Math.max(0, Number(ms) || 0) });
  }

  /** Resume a suspended AudioContext (call from a user gesture if `audio_state` says suspended). */
  resumeAudio(): Promise<void> {
    return this.audio.resume();
  }

  // ------------------------------------------------------------------------ connection hooks

  private send(message: ClientMessage): void {
    this.connection.send(message);
  }

  private startMessage(): Extract<ClientMessage, { type: "start" }> {
    const o = this.opts ?? normalizeOptions({});
    const msg: Extract<ClientMessage, { type: "start" }> = {
      type: "start",
      inputRate: o.inputRate,
      outputRate: o.outputRate,
      binary: true,
      turnDetection: o.turnDetection,
    };
    if (o.engine) msg.engine = o.engine;
    if (o.model) msg.model = o.model;
    if (o.instructions) msg.instructions = o.instructions;
    if (o.voice) msg.voice = o.voice;
    if (o.personality) msg.personality = o.personality;
    if (o.metadata) msg.metadata = o.metadata;
    if (this.tools.size) {
      msg.tools = [...this.tools].map(([name, { definition }]) => ({
        name,
        description: definition.description ?? "",
        parameters: definition.parameters ?? { type: "object", properties: {} },
      }));
    }
    return msg;
  }

  private onSessionReady(msg: SessionReady): void {
    this._capabilities = msg.capabilities ?? null;
    // Each connection is a new gateway session, which starts unheld: a hold the app asked for
    // before a reconnect is asked for again.
    const wasHeld = this.held;
    this.resetTurns();
    if (wasHeld && msg.capabilities?.turnControl) queueMicrotask(() => this.connection.session && this.hold());
    this.serverPaused = false;
    this.localPaused = false;
    this.updateBackpressure();
    this.dropAudio = false;
    this.assistantItem = null;
    this.interruptedItems = new Set();
    const o = this.opts ?? normalizeOptions({});
    const inRate = msg.inputAudio?.rate || o.inputRate;
    const outRate = msg.outputAudio?.rate || o.outputRate;
    this.inputRate = inRate;
    this.outputRate = outRate;
    this.audio.setCaptureRate(inRate);
    this.audio.configure({ sourceRate: outRate });
    const early = this.earlyFrames;
    this.earlyFrames = [];
    // Early audio was captured at the asked rate: send it only if the session kept that rate.
    if (inRate === o.inputRate && this.turnMode === "server_vad") {
      for (const pcm of early) this.sendFrame(pcm);
    }
  }

  private onDropped(): void {
    this.clearPtt();
    this.setServerSpeaking(false);
    this.setUserSpeaking(false);
    void this.audio.flush(); // the reply in flight is gone with the connection
  }

  private onFailed(error: VoxgateError): void {
    this.gen += 1;
    this.emit({ type: "error", code: error.code, message: error.message, fatal: true, local: true, error });
    void this.audio.teardown();
    this.resetSessionState();
    this.setStatus("disconnected", error.code);
  }

  private onMessage(msg: ServerMessage): void {
    const logged = msg.type === "audio" ? { type: "audio", itemId: msg.itemId } : msg;
    pushBounded(this.debug.events, { t: performance.now(), ...logged }, this.eventLogSize);
    switch (msg.type) {
      case "session_ready":
        this.emit({ type: "ready", session: msg });
        break;
      case "status":
        // The engine's upstream state, while the session lives (its end comes as a close).
        if (this.connection.session && msg.status !== "disconnected") this.setStatus(msg.status, msg.reason);
        this.emit({ type: "server_status", status: msg.status, ...(msg.reason !== undefined ? { reason: msg.reason } : {}) });
        break;
      case "speaking":
        if (msg.isSpeaking) {
          // Sent with the first audio of each item: binary frames that follow belong to it.
          if (msg.itemId) this.noteAssistantItem(msg.itemId);
          else this.dropAudio = false; // a new reply starts
        } else {
          this.audio.endOfStream();
        }
        this.setServerSpeaking(!!msg.isSpeaking);
        break;
      case "user_speaking":
        this.setUserSpeaking(!!msg.isSpeaking);
        if (
          msg.isSpeaking &&
          this.turnMode === "server_vad" &&
          this.audio.hasPendingPlayback &&
          this.turnTaking?.interruption !== "gateway" // then the gateway judges it: `turn` events
        ) {
          void this.interrupt(); // barge-in: the user talks over the reply
        }
        break;
      case "turn":
        this.onTurn(msg);
        break;
      case "transcript":
        if (msg.role === "assistant") this.noteAssistantItem(msg.itemId);
        this.emit({
          type: "transcript",
          role: msg.role,
          itemId: msg.itemId,
          text: msg.text ?? "",
          delta: msg.delta ?? "",
          final: !!msg.final,
        });
        break;
      case "audio":
        if (typeof msg.chunkBase64 === "string") this.onAudio(base64ToArrayBuffer(msg.chunkBase64), msg.itemId ?? null);
        break;
      case "response_done":
        this.audio.endOfStream();
        this.assistantItem = null;
        this.dropAudio = false;
        this.emit({ ...msg });
        break;
      case "interrupted":
        // The server cut the reply (its own VAD, or our interrupt): an idempotent flush.
        if (this.audio.hasPendingPlayback || this.assistantPaused) void this.audio.flush();
        this.assistantPaused = false;
        this.assistantItem = null;
        this.dropAudio = false;
        this.setServerSpeaking(false);
        this.emit({ type: "interrupted", local: false, itemId: msg.itemId ?? null, playedMs: msg.playedMs });
        break;
      case "error": {
        const error = new VoxgateError(msg.code, msg.message, { fatal: !!msg.fatal });
        this.emit({ type: "error", code: msg.code, message: msg.message, fatal: !!msg.fatal, error });
        break;
      }
      case "pong":
        this.emit(msg.id !== undefined ? { type: "pong", id: msg.id } : { type: "pong" });
        break;
      case "backpressure":
        this.serverPaused = !!msg.paused;
        this.updateBackpressure();
        break;
      case "tool_call":
        this.emit({ type: "tool_call", callId: msg.callId, name: msg.name, arguments: msg.arguments ?? {} });
        void this.runTool(msg);
        break;
      case "tool_status":
        this.emit({ ...msg });
        break;
      default:
        break;
    }
  }

  /** A `turn` event: follow the floor, and pause or resume playback as the gateway decides. */
  private onTurn(msg: Extract<ServerMessage, { type: "turn" }>): void {
    switch (msg.event) {
      case "user_turn_started":
        this.userTurn = true;
        break;
      case "user_turn_ended":
        this.userTurn = false;
        break;
      case "assistant_turn_started":
        this.assistantTurn = true;
        break;
      case "assistant_turn_ended":
        this.assistantTurn = false;
        break;
      case "assistant_paused":
        // Speech over the assistant that may be a barge-in: hold the buffer, do not drop it.
        this.assistantPaused = true;
        this.audio.pausePlayback();
        break;
      case "assistant_resumed":
        // A cough or an "mm-hmm": go on from where it paused.
        this.assistantPaused = false;
        this.audio.resumePlayback();
        break;
      case "held":
        this.held = true;
        break;
      case "released":
        this.held = false;
        break;
      default:
        break;
    }
    const event = { type: "turn", event: msg.event, floor: this.floor, held: this.held } as const;
    this.emit({
      ...event,
      ...(msg.reason !== undefined ? { reason: msg.reason } : {}),
      ...(msg.itemId !== undefined ? { itemId: msg.itemId } : {}),
    });
  }

  private noteAssistantItem(itemId: string | undefined): void {
    if (!itemId || itemId === this.assistantItem) return;
    if (this.interruptedItems.has(itemId)) return; // late text of a cut reply
    const previous = this.assistantItem;
    if (previous && previous.startsWith("pending:")) {
      // Audio that came before this item's first transcript was filed under a placeholder.
      this.audio.rename(previous, itemId);
    }
    this.assistantItem = itemId;
    this.dropAudio = false;
  }

  private onAudio(buffer: ArrayBuffer, itemId: string | null): void {
    this.debug.audioReceivedBytes += buffer.byteLength;
    if (this.dropAudio) {
      this.debug.audioDropped += buffer.byteLength;
      return;
    }
    if (itemId) this.noteAssistantItem(itemId);
    if (!this.assistantItem) this.assistantItem = `pending:${++this.pendingSeq}`;
    this.audio.enqueue(this.assistantItem, buffer);
  }

  // ------------------------------------------------------------------------ microphone

  private onCaptureFrame(pcm: ArrayBuffer, rms: number, seq: number): void {
    if (seq % 2 === 0) this.emit({ type: "level", rms });
    if (this.turnMode === "manual" && !this.pttActive) return;
    if (!this.connection.session) {
      // Not ready yet: keep the first seconds so words spoken right after Start are not lost.
      if (this._status === "connecting") {
        this.earlyFrames.push(pcm);
        if (this.earlyFrames.length * 20 > this.earlyAudioMs) this.earlyFrames.shift();
      }
      return;
    }
    this.sendFrame(pcm);
  }

  private sendFrame(pcm: ArrayBuffer): void {
    const c = this.audio.state.capture;
    if (!this.connection.isOpen) return;
    const queued = this.connection.bufferedAmount;
    if (this.localPaused) {
      if (queued < this.bufferedAmountLimit / 2) {
        this.localPaused = false;
        this.updateBackpressure();
      }
    } else if (queued > this.bufferedAmountLimit) {
      this.localPaused = true;
      this.updateBackpressure();
    }
    if (this.localPaused || this.serverPaused) {
      c.framesDropped += 1;
      return;
    }
    if (this.connection.sendBinary(pcm)) c.framesSent += 1;
  }

  // ------------------------------------------------------------------------ state changes

  private resetSessionState(): void {
    this.setServerSpeaking(false);
    this.setUserSpeaking(false);
    this.resetTurns();
    this.assistantItem = null;
    this.dropAudio = false;
  }

  private resetTurns(): void {
    this.held = false;
    this.userTurn = false;
    this.assistantTurn = false;
    if (this.assistantPaused) this.audio.resumePlayback();
    this.assistantPaused = false;
  }

  private clearPtt(): void {
    if (this.pttTimer !== null) clearTimeout(this.pttTimer);
    this.pttTimer = null;
    this.pttActive = false;
  }

  private setStatus(status: ConnectionStatus, reason?: string | null): void {
    if (this._status === status) return;
    this._status = status;
    this.emit({ type: "status", status, reason: reason || null });
  }

  private lastSpeaking = false;

  private speakingMaybeChanged(): void {
    const now = this.isSpeaking;
    if (now === this.lastSpeaking) return;
    this.lastSpeaking = now;
    this.emit({ type: "speaking", isSpeaking: now });
  }

  private setServerSpeaking(value: boolean): void {
    this.serverSpeaking = value;
    this.speakingMaybeChanged();
  }

  private setUserSpeaking(value: boolean): void {
    if (this.userSpeaking === value) return;
    this.userSpeaking = value;
    this.emit({ type: "user_speaking", isSpeaking: value });
  }

  private updateBackpressure(): void {
    const paused = this.serverPaused || this.localPaused;
    const c = this.audio.state.capture;
    if (paused === c.paused) return;
    c.paused = paused;
    this.emit({ type: "backpressure", paused, source: this.serverPaused ? "server" : this.localPaused ? "network" : null });
  }

  private logSent(message: ClientMessage): void {
    pushBounded(this.debug.sent, { t: performance.now(), ...message }, this.eventLogSize);
  }
}

// -------------------------------------------------------------------------------- helpers

function normalizeOptions(options: StartOptions): NormalizedOptions {
  const td = options.turnDetection;
  const detection: TurnDetection = {
    mode: "server_vad",
    ...(typeof td === "string" ? { mode: td } : (td ?? {})),
  } as TurnDetection;
  if (detection.mode !== "manual") detection.mode = "server_vad";
  return {
    ...options,
    turnDetection: detection,
    inputRate: options.inputRate || 24000,
    outputRate: options.outputRate || 24000,
    microphone: options.microphone !== false,
    playback: options.playback !== false,
    echoCancellation: options.echoCancellation !== false,
    noiseSuppression: options.noiseSuppression !== false,
    autoGainControl: options.autoGainControl !== false,
  };
}

function base64ToArrayBuffer(text: string): ArrayBuffer {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out.buffer;
}

function pushBounded<T>(list: T[], item: T, max: number): void {
  list.push(item);
  if (list.length > max) list.splice(0, list.length - max);
}
