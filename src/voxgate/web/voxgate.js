// voxgate.js: a browser client for the voxgate neutral protocol v1, as one ES module.
//
// It mirrors the gateway's engine seam (start, stop, sendUserMessage, sendContextUpdate,
// interrupt, events) and owns the audio plumbing a voice app needs: microphone capture at the
// session rate in an AudioWorklet, gap-free playback with an interruptible ring buffer, barge-in,
// push-to-talk, backpressure and reconnection. No framework, no build step:
//
//   import { VoxgateClient } from "/voxgate.js";
//   const client = new VoxgateClient();            // ws(s)://<this host>/ws
//   client.on((event) => {
//     if (event.type === "transcript") console.log(event.role, event.text, event.final);
//   });
//   await client.start();                          // asks for the microphone, then talks
//   client.sendUserMessage("What's the weather like on Mars?");
//   client.interrupt();                            // stop the reply, tell the server what was heard
//   await client.stop();
//
// Events passed to listeners (`event.type`): status, ready, transcript, speaking, user_speaking,
// response_done, interrupted, error, backpressure, audio_unavailable, audio_state, level,
// reconnecting, talking, pong. See README "Browser client".

export const PROTOCOL_VERSION = 1;
export const SUBPROTOCOL = "voxgate.v1";
export const BEARER_SUBPROTOCOL_PREFIX = "voxgate.bearer.";

/** Close codes after which reconnecting can help (server restart, network drop, crash). */
const RETRYABLE_CLOSE_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014, 1015]);
/** Fatal error codes after which reconnecting can help; every other fatal error is final. */
const RETRYABLE_ERROR_CODES = new Set(["internal", "timeout"]);

const CLOSE_SENTENCES = {
  1008: "The server closed the session because it received too many invalid messages.",
  1009: "A message was too large for the server, so it closed the session.",
  4401: "The server refused the connection: sign-in is required, or the token has expired.",
  4403: "The server does not accept connections from this page's address (allowed origins).",
  4408: "The session ended after being idle for too long. Press Start to begin again.",
  4429: "The server is at its session or rate limit. Please try again in a moment.",
  4502: "The voice provider failed and the session had to end. Please try again later.",
  4503: "The voice engine is unavailable right now. Please try again later.",
};

const MIC_SENTENCES = {
  NotAllowedError:
    "Microphone access was denied, so this conversation is text-only. Allow the microphone in the browser's site settings and press Start again to talk.",
  SecurityError:
    "Microphone access was denied, so this conversation is text-only. Allow the microphone in the browser's site settings and press Start again to talk.",
  NotFoundError: "No microphone was found, so this conversation is text-only. Connect one and press Start again to talk.",
  NotReadableError:
    "The microphone is in use by another application or could not be opened, so this conversation is text-only.",
  OverconstrainedError: "The selected microphone is not available, so this conversation is text-only.",
  AbortError: "The microphone could not be started, so this conversation is text-only.",
};

/** An error the user can act on: a protocol error code, a sentence, and whether it ended the session. */
export class VoxgateError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{fatal?: boolean, closeCode?: number}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "VoxgateError";
    this.code = code;
    this.fatal = !!extra.fatal;
    this.closeCode = extra.closeCode;
  }
}

/**
 * @typedef {Object} StartOptions
 * @property {string} [engine]            engine name, where the server allows a choice
 * @property {string} [instructions]
 * @property {string} [voice]
 * @property {Object} [personality]       playfulness, empathy, humor, intelligence, supportiveness (0-100)
 * @property {"server_vad"|"manual"|Object} [turnDetection] "manual" = push-to-talk
 * @property {number} [inputRate=24000]
 * @property {number} [outputRate=24000]
 * @property {string} [conversationId]    resume a stored conversation
 * @property {Object} [metadata]
 * @property {boolean} [microphone=true]  capture the microphone (false = text in, audio out)
 * @property {boolean} [playback=true]    play assistant audio
 * @property {boolean} [echoCancellation=true]
 * @property {boolean} [noiseSuppression=true]
 * @property {boolean} [autoGainControl=true]
 * @property {string} [deviceId]          a specific microphone
 */

/**
 * One voice conversation with a voxgate gateway.
 */
export class VoxgateClient {
  /**
   * @param {Object} [config]
   * @param {string} [config.url]    ws(s):// or http(s):// URL of the /ws endpoint (default: this page's host)
   * @param {string} [config.token]  bearer token (JWT or single-use session token)
   * @param {{attempts?: number, baseMs?: number, maxMs?: number}} [config.reconnect]
   * @param {number} [config.prebufferMs=80]   playback prebuffer
   * @param {number} [config.bufferedAmountLimit=65536] socket bytes queued before mic audio pauses
   * @param {number} [config.startTimeoutMs=15000]
   * @param {number} [config.pingIntervalMs=20000] keep-alive ping; 0 disables
   * @param {number} [config.pttTailMs=150]   audio still sent after a push-to-talk release
   * @param {number} [config.eventLogSize=300]
   */
  constructor(config = {}) {
    this.url = resolveSocketUrl(config.url);
    this.token = config.token || null;
    this.reconnectPolicy = { attempts: 5, baseMs: 1000, maxMs: 30000, ...(config.reconnect || {}) };
    this.prebufferMs = config.prebufferMs ?? 80;
    this.bufferedAmountLimit = config.bufferedAmountLimit ?? 65536;
    this.startTimeoutMs = config.startTimeoutMs ?? 15000;
    this.pingIntervalMs = config.pingIntervalMs ?? 20000;
    this.pttTailMs = config.pttTailMs ?? 150;
    this.eventLogSize = config.eventLogSize ?? 300;

    this._listeners = new Set();
    this._status = "disconnected";
    this._serverSpeaking = false;
    this._userSpeaking = false;
    this._capabilities = null;
    this._session = null;
    this._ws = null;
    this._gen = 0; // bumps on every start/stop, so stale async work can tell it lost
    this._audio = null;
    this._audioMode = "none";
    this._volume = 1;
    this._muted = false;
    this._interruptedItems = new Set();
    this._pendingSeq = 0;
    this._assistantItem = null;
    this._dropAudio = false;
    /** Mic frames captured before `session_ready`, sent once it arrives (people talk at once). */
    this._earlyFrames = [];
    this.earlyAudioMs = config.earlyAudioMs ?? 3000;

    /** Live numbers for dashboards and tests (`window.voxgateDebug` in the demo page). */
    this.debug = {
      playback: {
        samplesPlayed: 0,
        underruns: 0,
        playedMsByItem: {},
        isPlaying: false,
        buffered: 0,
        sampleRate: 0,
        currentItem: null,
        lastFlushAt: null, // performance.now() when the worklet reported silence after a flush
        lastSilentAt: null, // when the speaker falls silent, from the audio clock (performance.now() scale)
        lastStopLatencyMs: null, // interrupt() to silent output, on the audio clock
        startedAt: null,
        level: 0, // output RMS, for meters
      },
      capture: { framesCaptured: 0, framesSent: 0, framesDropped: 0, paused: false, level: 0 },
      interruptRequestedAt: null,
      interruptRequestedContextTime: null,
      lastInterrupt: null,
      audioDropped: 0,
      audioReceivedBytes: 0,
      reconnects: 0,
      events: [], // last server messages (audio payloads left out)
      sent: [], // last control messages sent
    };
  }

  // ---------------------------------------------------------------- read-only state

  /** "disconnected" | "connecting" | "connected" | "reconnecting" */
  get status() {
    return this._status;
  }

  /** The assistant is talking: audio is being generated or is still playing here. */
  get isSpeaking() {
    return this._serverSpeaking || this.debug.playback.isPlaying;
  }

  /** The server's voice activity detection hears the user. */
  get isUserSpeaking() {
    return this._userSpeaking;
  }

  /** `{audioIn, audioOut, tools, serverVad}` from `session_ready`, or null before it. */
  get capabilities() {
    return this._capabilities;
  }

  /** The `session_ready` message of the current connection, or null. */
  get session() {
    return this._session;
  }

  get conversationId() {
    return this._conversationId || null;
  }

  /** "full" (mic + speaker), "playback" (speaker only), "text" (no audio), "starting" (audio
   * is being set up: worklets loading, microphone permission pending) or "none" (stopped). */
  get audioMode() {
    return this._audioMode;
  }

  /** "server_vad" (hands-free) or "manual" (push-to-talk). */
  get turnMode() {
    return (this._opts && this._opts.turnDetection.mode) || "server_vad";
  }

  // ---------------------------------------------------------------- events

  /**
   * Listen to every event. Returns a function that removes the listener.
   * @param {(event: Object) => void} listener
   * @returns {() => void}
   */
  on(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  _emit(event) {
    for (const listener of [...this._listeners]) {
      try {
        listener(event);
      } catch (err) {
        console.error("voxgate listener failed", err);
      }
    }
  }

  // ---------------------------------------------------------------- lifecycle

  /**
   * Open the session: set up audio (falling back to text-only with a reason when the microphone
   * cannot start), connect, send `start` and wait for `session_ready`.
   * Call it from a user gesture (a click) so the browser lets audio play.
   * @param {StartOptions} [options]
   * @returns {Promise<Object>} the `session_ready` message
   */
  async start(options = {}) {
    if (this._status !== "disconnected") {
      throw new VoxgateError("bad_request", "The session is already running; stop it first.");
    }
    this._opts = normalizeOptions(options);
    this._conversationId = this._opts.conversationId || null;
    this._userStopped = false;
    this._fatal = null;
    const gen = ++this._gen;
    this._setStatus("connecting");
    // Created synchronously, inside the user's click, so autoplay rules let it run.
    const audioReady = this._setupAudio(gen).finally(() => {
      // Whatever path setup took, it ends in a definite mode.
      if (gen === this._gen && this._audioMode === "starting") this._audioMode = "text";
    });
    try {
      await this._connect(gen);
    } catch (err) {
      await audioReady.catch(() => {});
      if (gen === this._gen) {
        await this._teardownAudio();
        this._setStatus("disconnected", err.code || "connect_failed");
      }
      throw err;
    }
    await audioReady;
    return this._session;
  }

  /** End the session cleanly (`stop`, then close). Never reconnects afterwards. */
  async stop() {
    this._userStopped = true;
    this._gen += 1;
    this._cancelReconnect();
    this._clearTimers();
    this._earlyFrames = [];
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      if (ws.readyState === WebSocket.OPEN) {
        try {
          ws.send(JSON.stringify({ type: "stop" }));
          this._logSent({ type: "stop" });
        } catch {
          /* closing anyway */
        }
        ws.close(1000, "client stop");
      } else if (ws.readyState === WebSocket.CONNECTING) {
        ws.close();
      }
    }
    if (this._readyWaiter) {
      this._readyWaiter.reject(new VoxgateError("stopped", "The session was stopped."));
    }
    await this._teardownAudio();
    this._session = null;
    this._setServerSpeaking(false);
    this._setUserSpeaking(false);
    this._setStatus("disconnected", "client_stop");
  }

  /**
   * Send typed text as the user's turn (works without a microphone). A reply that is still
   * playing is interrupted first, so the server hears the interrupt before the new turn.
   */
  async sendUserMessage(text) {
    const value = String(text ?? "").trim();
    if (!value) throw new VoxgateError("bad_request", "Type a message first.");
    if (this.debug.playback.isPlaying) await this.interrupt();
    this._sendControl({ type: "user_message", text: value });
  }

  /** Give the assistant structured context (an object), without starting a turn. */
  sendContextUpdate(payload) {
    if (!payload || typeof payload !== "object" || Array.isArray(payload)) {
      throw new VoxgateError("bad_request", "A context update must be an object.");
    }
    this._sendControl({ type: "context_update", payload });
  }

  /** Manual turn end (push-to-talk): respond to what was said. */
  commit() {
    this._sendControl({ type: "commit" });
  }

  /**
   * Stop the assistant now: flush local playback at once and tell the server how much of the
   * current item was heard (`playedMs`), so it can truncate the turn to that.
   * @returns {Promise<{itemId: string|null, playedMs: number|undefined}>}
   */
  async interrupt() {
    const requestedAt = performance.now();
    this.debug.interruptRequestedAt = requestedAt;
    // The audio clock at the request: the worklet reports the audio-clock time its output went
    // silent, so the stop latency is measured where the sound is made, not where it is reported.
    this.debug.interruptRequestedContextTime = this._audio ? this._audio.ctx.currentTime : null;
    const inFlight = this._serverSpeaking || this.debug.playback.isPlaying || this.debug.playback.buffered > 0;
    if (inFlight) {
      // Audio of the cancelled reply may still be on the wire: drop it until a new reply starts.
      this._dropAudio = true;
      if (this._assistantItem) this._interruptedItems.add(this._assistantItem);
    }
    const ack = await this._flushPlayback();
    let itemId = this._assistantItem;
    let playedMs;
    const rate = this.debug.playback.sampleRate;
    if (ack && ack.itemId && rate) {
      itemId = ack.itemId;
      playedMs = Math.round((ack.playedSamples / rate) * 1000);
    } else if (itemId && this.debug.playback.playedMsByItem[itemId] !== undefined) {
      playedMs = this.debug.playback.playedMsByItem[itemId];
    }
    if (itemId) this._interruptedItems.add(itemId);
    const message = { type: "interrupt" };
    if (playedMs !== undefined) message.playedMs = playedMs;
    if (this._ws && this._ws.readyState === WebSocket.OPEN && this._session) {
      this._sendControl(message);
    }
    this._setServerSpeaking(false);
    const info = { itemId: itemId && !itemId.startsWith("pending:") ? itemId : null, playedMs };
    this.debug.lastInterrupt = { ...info, requestedAt };
    this._emit({ type: "interrupted", local: true, ...info });
    return info;
  }

  /** Push-to-talk: the talk button went down. Barges in if the assistant is talking. */
  startTalking() {
    if (this.turnMode !== "manual") return;
    clearTimeout(this._pttTimer);
    this._pttTimer = null;
    if (this._pttActive) return;
    if (this.debug.playback.isPlaying || this._serverSpeaking) this.interrupt();
    this._pttActive = true;
    this._emit({ type: "talking", active: true });
  }

  /** Push-to-talk: the talk button came up. Sends a short tail, then `commit`. */
  stopTalking() {
    if (this.turnMode !== "manual" || !this._pttActive || this._pttTimer) return;
    this._pttTimer = setTimeout(() => {
      this._pttTimer = null;
      this._pttActive = false;
      this._emit({ type: "talking", active: false });
      if (this._ws && this._ws.readyState === WebSocket.OPEN && this._session) this.commit();
    }, this.pttTailMs);
  }

  /**
   * Switch between hands-free ("server_vad") and push-to-talk ("manual"). While connected this
   * restarts the session on the same conversation, because turn detection is fixed per session.
   */
  async setTurnMode(mode) {
    const next = mode === "manual" ? "manual" : "server_vad";
    if (!this._opts) this._opts = normalizeOptions({});
    if (this._opts.turnDetection.mode === next) return;
    this._opts.turnDetection = { ...this._opts.turnDetection, mode: next };
    this._pttActive = false;
    clearTimeout(this._pttTimer);
    this._pttTimer = null;
    if (this._status === "connected" && this._ws) {
      const ws = this._ws;
      this._ws = null; // its close is ours: no reconnect
      this._clearTimers();
      try {
        ws.send(JSON.stringify({ type: "stop" }));
        this._logSent({ type: "stop" });
      } catch {
        /* reconnecting anyway */
      }
      ws.close(1000, "switching turn mode");
      await this._flushPlayback();
      this._session = null;
      this._setStatus("connecting", "turn_mode");
      const gen = this._gen;
      try {
        await this._connect(gen);
      } catch (err) {
        if (gen === this._gen) this._fail(err);
        throw err;
      }
    }
  }

  /** Playback volume, 0..1. */
  setVolume(volume) {
    this._volume = Math.max(0, Math.min(1, Number(volume)));
    this._postPlayback({ type: "config", volume: this._volume });
  }

  /** Mute or unmute the assistant's audio (it keeps playing silently, so timing stays right). */
  setMuted(muted) {
    this._muted = !!muted;
    this._postPlayback({ type: "config", muted: this._muted });
  }

  /** Playback prebuffer in milliseconds (default 80). */
  setPrebufferMs(ms) {
    this.prebufferMs = Math.max(0, Number(ms) || 0);
    this._postPlayback({ type: "config", prebufferMs: this.prebufferMs });
  }

  // ---------------------------------------------------------------- connection

  _startMessage() {
    const o = this._opts;
    const msg = {
      type: "start",
      inputRate: o.inputRate,
      outputRate: o.outputRate,
      binary: true,
      turnDetection: o.turnDetection,
    };
    for (const key of ["engine", "instructions", "voice", "personality", "metadata"]) {
      if (o[key] !== undefined && o[key] !== null && o[key] !== "") msg[key] = o[key];
    }
    if (this._conversationId) msg.conversationId = this._conversationId;
    return msg;
  }

  /** One connection attempt: resolves on `session_ready`, rejects with a VoxgateError. */
  _connect(gen) {
    return new Promise((resolve, reject) => {
      const protocols = this.token ? [SUBPROTOCOL, BEARER_SUBPROTOCOL_PREFIX + this.token] : [SUBPROTOCOL];
      let ws;
      try {
        ws = new WebSocket(this.url, protocols);
      } catch (err) {
        reject(new VoxgateError("bad_request", `The server address is not valid: ${this.url}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      this._ws = ws;
      this._lastError = null;
      let settled = false;
      const settle = (fn, value) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (this._readyWaiter === waiter) this._readyWaiter = null;
        fn(value);
      };
      const waiter = {
        resolve: (msg) => settle(resolve, msg),
        reject: (err) => settle(reject, err),
      };
      this._readyWaiter = waiter;
      const timer = setTimeout(() => {
        waiter.reject(new VoxgateError("timeout", "The server did not answer in time. Please try again."));
        if (this._ws === ws) this._ws = null;
        ws.close();
      }, this.startTimeoutMs);
      ws.onopen = () => {
        if (this._ws !== ws) return;
        const start = this._startMessage();
        ws.send(JSON.stringify(start));
        this._logSent(start);
      };
      ws.onmessage = (event) => {
        if (this._ws !== ws) return;
        this._onMessage(event.data);
      };
      ws.onerror = () => {
        /* the close event that follows carries the details */
      };
      ws.onclose = (event) => {
        const wasCurrent = this._ws === ws;
        if (wasCurrent) this._ws = null;
        if (!settled) {
          waiter.reject(this._closeError(event, true));
          return;
        }
        if (wasCurrent && gen === this._gen) this._onUnexpectedClose(event);
      };
    });
  }

  _closeError(event, beforeReady) {
    const serverError = this._lastError;
    if (serverError) {
      return new VoxgateError(serverError.code, serverError.message, {
        fatal: true,
        closeCode: event.code,
      });
    }
    const sentence = CLOSE_SENTENCES[event.code];
    if (sentence) return new VoxgateError(closeCodeToError(event.code), sentence, { fatal: true, closeCode: event.code });
    if (beforeReady) {
      return new VoxgateError(
        "upstream_unavailable",
        `Could not reach the voxgate server at ${this.url}. Check that it is running and try again.`,
        { closeCode: event.code },
      );
    }
    return new VoxgateError("disconnected", "The connection to the server was lost.", { closeCode: event.code });
  }

  _isRetryable(errOrEvent) {
    if (this._userStopped) return false;
    const code = errOrEvent.closeCode ?? errOrEvent.code;
    if (this._fatal && !RETRYABLE_ERROR_CODES.has(this._fatal.code)) return false;
    if (typeof code === "number") return RETRYABLE_CLOSE_CODES.has(code);
    return errOrEvent.code === "upstream_unavailable" || errOrEvent.code === "timeout";
  }

  _onUnexpectedClose(event) {
    this._clearTimers();
    this._session = null;
    this._pttActive = false;
    this._setServerSpeaking(false);
    this._setUserSpeaking(false);
    this._flushPlayback(); // the reply in flight is gone with the connection
    if (this._userStopped) return;
    if (this._isRetryable({ closeCode: event.code })) {
      this._reconnect(event.reason || `closed (${event.code})`);
    } else {
      this._fail(this._closeError(event, false));
    }
  }

  async _reconnect(reason) {
    const gen = this._gen;
    const { attempts, baseMs, maxMs } = this.reconnectPolicy;
    this._setStatus("reconnecting", reason);
    for (let attempt = 1; attempt <= attempts; attempt++) {
      const delay = Math.min(maxMs, baseMs * 2 ** (attempt - 1));
      // Equal jitter (as the gateway's ReconnectPolicy): at least half the delay, never more.
      const wait = delay / 2 + (Math.random() * delay) / 2;
      this._emit({ type: "reconnecting", attempt, attempts, delayMs: Math.round(wait) });
      const slept = await this._sleep(wait);
      if (!slept || gen !== this._gen || this._userStopped) return;
      try {
        this.debug.reconnects += 1;
        await this._connect(gen);
        return; // `session_ready` set the status to connected
      } catch (err) {
        if (gen !== this._gen) return;
        if (!this._isRetryable(err)) {
          this._fail(err);
          return;
        }
        if (this._status !== "reconnecting") this._setStatus("reconnecting", reason);
      }
    }
    this._fail(
      new VoxgateError(
        "disconnected",
        `Lost the connection to the server and could not reconnect after ${attempts} attempts. Press Start to try again.`,
        { fatal: true },
      ),
    );
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this._sleeper = null;
        resolve(true);
      }, ms);
      this._sleeper = () => {
        clearTimeout(timer);
        this._sleeper = null;
        resolve(false);
      };
    });
  }

  _cancelReconnect() {
    if (this._sleeper) this._sleeper();
  }

  /** The session is over for good: tell listeners why, release audio, status disconnected. */
  _fail(err) {
    this._gen += 1;
    this._cancelReconnect();
    this._clearTimers();
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.close();
    }
    this._emit({ type: "error", code: err.code, message: err.message, fatal: true, local: true });
    this._teardownAudio();
    this._session = null;
    this._setServerSpeaking(false);
    this._setUserSpeaking(false);
    this._setStatus("disconnected", err.code);
  }

  _sendControl(message) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !this._session) {
      throw new VoxgateError("not_started", "Not connected yet: press Start first.");
    }
    ws.send(JSON.stringify(message));
    this._logSent(message);
  }

  _logSent(message) {
    pushBounded(this.debug.sent, { t: performance.now(), ...message }, this.eventLogSize);
  }

  _startPing() {
    this._clearTimers();
    if (!this.pingIntervalMs) return;
    this._pingTimer = setInterval(() => {
      const ws = this._ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      const quietFor = performance.now() - (this._lastMessageAt || 0);
      if (this._pingSentAt && quietFor > this.pingIntervalMs) {
        // A ping went unanswered for a whole interval: the connection is dead but not closed.
        this._ws = null;
        ws.close();
        this._onUnexpectedClose({ code: 1006, reason: "no answer to ping" });
        return;
      }
      this._pingSentAt = performance.now();
      ws.send(JSON.stringify({ type: "ping", id: Math.round(this._pingSentAt) }));
    }, this.pingIntervalMs);
  }

  _clearTimers() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._pingSentAt = null;
  }

  // ---------------------------------------------------------------- incoming messages

  _onMessage(data) {
    this._lastMessageAt = performance.now();
    if (typeof data !== "string") {
      this._onAudio(data, null);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg.type !== "string") return;
    const logged = msg.type === "audio" ? { type: "audio", itemId: msg.itemId } : msg;
    pushBounded(this.debug.events, { t: this._lastMessageAt, ...logged }, this.eventLogSize);

    switch (msg.type) {
      case "session_ready":
        this._onSessionReady(msg);
        break;
      case "status":
        if (this._session && msg.status !== "disconnected") this._setStatus(msg.status, msg.reason);
        this._emit({ type: "server_status", status: msg.status, reason: msg.reason });
        break;
      case "speaking":
        if (msg.isSpeaking) {
          // Sent with the first audio of each item: binary frames that follow belong to it.
          if (msg.itemId) this._noteAssistantItem(msg.itemId);
          else this._dropAudio = false; // a new reply starts
        } else {
          this._postPlayback({ type: "end" });
        }
        this._setServerSpeaking(!!msg.isSpeaking);
        break;
      case "user_speaking":
        this._setUserSpeaking(!!msg.isSpeaking);
        if (
          msg.isSpeaking &&
          this.turnMode === "server_vad" &&
          (this.debug.playback.isPlaying || this.debug.playback.buffered > 0)
        ) {
          this.interrupt(); // barge-in: the user talks over the reply
        }
        break;
      case "transcript":
        if (msg.role === "assistant") this._noteAssistantItem(msg.itemId);
        this._emit({
          type: "transcript",
          role: msg.role,
          itemId: msg.itemId,
          text: msg.text ?? "",
          delta: msg.delta ?? "",
          final: !!msg.final,
        });
        break;
      case "audio":
        if (typeof msg.chunkBase64 === "string") this._onAudio(base64ToArrayBuffer(msg.chunkBase64), msg.itemId || null);
        break;
      case "response_done":
        this._postPlayback({ type: "end" });
        this._assistantItem = null;
        this._dropAudio = false;
        this._emit({ ...msg });
        break;
      case "interrupted":
        // The server cut the reply (its own VAD, or our interrupt): idempotent flush.
        if (this.debug.playback.isPlaying || this.debug.playback.buffered > 0) this._flushPlayback();
        this._assistantItem = null;
        this._dropAudio = false;
        this._setServerSpeaking(false);
        this._emit({ type: "interrupted", local: false, itemId: msg.itemId, playedMs: msg.playedMs });
        break;
      case "error":
        if (msg.fatal) {
          this._fatal = msg;
          this._lastError = msg;
          if (this._readyWaiter) {
            this._readyWaiter.reject(new VoxgateError(msg.code, msg.message, { fatal: true }));
          }
        }
        this._emit({ type: "error", code: msg.code, message: msg.message, fatal: !!msg.fatal });
        break;
      case "pong":
        this._pingSentAt = null;
        this._emit({ type: "pong", id: msg.id });
        break;
      case "backpressure":
        this._serverPaused = !!msg.paused;
        this._updateBackpressure();
        break;
      default:
        break;
    }
  }

  _onSessionReady(msg) {
    this._session = msg;
    this._capabilities = msg.capabilities || null;
    this._conversationId = msg.conversationId || this._conversationId;
    this._fatal = null;
    this._lastError = null;
    this._serverPaused = false;
    this._localPaused = false;
    this._updateBackpressure();
    this._dropAudio = false;
    this._assistantItem = null;
    this._interruptedItems = new Set();
    const inRate = (msg.inputAudio && msg.inputAudio.rate) || this._opts.inputRate;
    const outRate = (msg.outputAudio && msg.outputAudio.rate) || this._opts.outputRate;
    this._inputRate = inRate;
    this._outputRate = outRate;
    if (this._audio && this._audio.capture) this._audio.capture.port.postMessage({ type: "rate", targetRate: inRate });
    this._postPlayback({ type: "config", sourceRate: outRate });
    this._startPing();
    const early = this._earlyFrames;
    this._earlyFrames = [];
    if (inRate === this._opts.inputRate && this.turnMode === "server_vad") {
      for (const pcm of early) this._sendFrame(pcm);
    }
    if (this._readyWaiter) this._readyWaiter.resolve(msg);
    this._setStatus("connected");
    this._emit({ type: "ready", session: msg });
  }

  _noteAssistantItem(itemId) {
    if (!itemId || itemId === this._assistantItem) return;
    if (this._interruptedItems && this._interruptedItems.has(itemId)) return; // late text of a cut reply
    const previous = this._assistantItem;
    if (previous && previous.startsWith("pending:")) {
      // Binary audio carries no item id: audio that came before this item's first transcript
      // was filed under a placeholder; give it its real name now.
      this._postPlayback({ type: "rename", from: previous, to: itemId });
      const map = this.debug.playback.playedMsByItem;
      if (map[previous] !== undefined) {
        map[itemId] = map[previous];
        delete map[previous];
      }
    }
    this._assistantItem = itemId;
    this._dropAudio = false;
  }

  _onAudio(buffer, itemId) {
    this.debug.audioReceivedBytes += buffer.byteLength;
    if (this._dropAudio) {
      this.debug.audioDropped += buffer.byteLength;
      return;
    }
    if (itemId) this._noteAssistantItem(itemId);
    if (!this._assistantItem) this._assistantItem = `pending:${++this._pendingSeq || (this._pendingSeq = 1)}`;
    if (!this._audio || !this._audio.playback || buffer.byteLength < 2) return;
    const even = buffer.byteLength % 2 ? buffer.slice(0, buffer.byteLength - 1) : buffer;
    this._audio.playback.port.postMessage({ type: "audio", itemId: this._assistantItem, pcm: even }, [even]);
  }

  // ---------------------------------------------------------------- state changes

  _setStatus(status, reason) {
    if (this._status === status) return;
    this._status = status;
    this._emit({ type: "status", status, reason: reason || null });
  }

  _setServerSpeaking(value) {
    const before = this.isSpeaking;
    this._serverSpeaking = value;
    if (this.isSpeaking !== before) this._emit({ type: "speaking", isSpeaking: this.isSpeaking });
  }

  _setPlaybackPlaying(value) {
    const before = this.isSpeaking;
    this.debug.playback.isPlaying = value;
    if (this.isSpeaking !== before) this._emit({ type: "speaking", isSpeaking: this.isSpeaking });
  }

  _setUserSpeaking(value) {
    if (this._userSpeaking === value) return;
    this._userSpeaking = value;
    this._emit({ type: "user_speaking", isSpeaking: value });
  }

  _updateBackpressure() {
    const paused = !!(this._serverPaused || this._localPaused);
    if (paused === this.debug.capture.paused) return;
    this.debug.capture.paused = paused;
    this._emit({
      type: "backpressure",
      paused,
      source: this._serverPaused ? "server" : this._localPaused ? "network" : null,
    });
  }

  // ---------------------------------------------------------------- audio

  async _setupAudio(gen) {
    const o = this._opts;
    this._audioMode = "starting";
    if (!o.playback && !o.microphone) {
      this._audioMode = "text";
      return;
    }
    if (globalThis.isSecureContext === false) {
      // AudioWorklet and getUserMedia exist only on secure pages (https:// or localhost).
      this._audioMode = "text";
      this._audioUnavailable(
        "insecure_context",
        "Voice needs a secure page (https:// or http://localhost), so this conversation is text-only.",
      );
      return;
    }
    const AudioCtx = globalThis.AudioContext || globalThis.webkitAudioContext;
    if (!AudioCtx || typeof AudioWorkletNode === "undefined") {
      this._audioMode = "text";
      this._audioUnavailable(
        "no_web_audio",
        "This browser cannot record or play audio here (no Web Audio worklets), so this conversation is text-only.",
      );
      return;
    }
    const ctx = new AudioCtx({ latencyHint: "interactive" });
    const audio = { ctx, playback: null, capture: null, stream: null, source: null, sink: null };
    this._audio = audio;
    this.debug.playback.sampleRate = ctx.sampleRate;
    ctx.resume().catch(() => {});
    ctx.onstatechange = () => this._emit({ type: "audio_state", state: ctx.state });
    try {
      await ctx.audioWorklet.addModule(new URL("./playback-worklet.js", import.meta.url));
      if (o.microphone) await ctx.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
    } catch (err) {
      if (gen !== this._gen) return;
      this._audioMode = "text";
      this._audioUnavailable("worklet_failed", `Audio could not start (${err.message}), so this conversation is text-only.`);
      await this._teardownAudio();
      return;
    }
    if (gen !== this._gen || this._audio !== audio) return;

    if (o.playback) {
      const node = new AudioWorkletNode(ctx, "voxgate-playback", {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: {
          prebufferMs: this.prebufferMs,
          sourceRate: this._outputRate || o.outputRate,
          volume: this._volume,
          muted: this._muted,
        },
      });
      node.port.onmessage = (event) => this._onPlaybackMessage(event.data);
      node.connect(ctx.destination);
      audio.playback = node;
      this._audioMode = "playback";
    }

    if (o.microphone) {
      const media = globalThis.navigator && navigator.mediaDevices;
      if (!media || !media.getUserMedia) {
        if (this._audioMode === "starting") this._audioMode = "text";
        this._audioUnavailable(
          "insecure_context",
          "The microphone needs a secure page (https:// or localhost), so this conversation is text-only.",
        );
        return;
      }
      let stream;
      try {
        stream = await media.getUserMedia({
          audio: {
            echoCancellation: o.echoCancellation,
            noiseSuppression: o.noiseSuppression,
            autoGainControl: o.autoGainControl,
            channelCount: { ideal: 1 },
            ...(o.deviceId ? { deviceId: { exact: o.deviceId } } : {}),
          },
        });
      } catch (err) {
        if (gen !== this._gen) return;
        if (this._audioMode === "starting") this._audioMode = "text";
        const sentence =
          MIC_SENTENCES[err && err.name] ||
          `The microphone could not start (${(err && err.message) || err}), so this conversation is text-only.`;
        this._audioUnavailable(err && err.name === "NotAllowedError" ? "microphone_denied" : "microphone_failed", sentence);
        return;
      }
      if (gen !== this._gen || this._audio !== audio) {
        for (const track of stream.getTracks()) track.stop();
        return;
      }
      audio.stream = stream;
      audio.source = ctx.createMediaStreamSource(stream);
      const capture = new AudioWorkletNode(ctx, "voxgate-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { targetRate: this._inputRate || o.inputRate, frameMs: 20 },
      });
      capture.port.onmessage = (event) => this._onCaptureMessage(event.data);
      // A silent sink keeps the capture node pulled by the graph without being heard.
      audio.sink = ctx.createGain();
      audio.sink.gain.value = 0;
      audio.source.connect(capture);
      capture.connect(audio.sink).connect(ctx.destination);
      audio.capture = capture;
      this._audioMode = "full";
      for (const track of stream.getAudioTracks()) {
        track.onended = () => {
          if (this._audio === audio) {
            this._audioMode = audio.playback ? "playback" : "text";
            this._audioUnavailable("microphone_ended", "The microphone was disconnected, so this conversation is now text-only.");
          }
        };
      }
    }
    this._emit({ type: "audio_state", state: ctx.state, mode: this._audioMode });
  }

  _audioUnavailable(reason, message) {
    this._emit({ type: "audio_unavailable", reason, message, mode: this._audioMode });
  }

  async _teardownAudio() {
    const audio = this._audio;
    this._audio = null;
    this._audioMode = "none";
    this.debug.playback.isPlaying = false;
    this.debug.playback.buffered = 0;
    if (!audio) return;
    if (audio.stream) for (const track of audio.stream.getTracks()) track.stop();
    try {
      if (audio.source) audio.source.disconnect();
      if (audio.capture) audio.capture.disconnect();
      if (audio.playback) audio.playback.disconnect();
    } catch {
      /* already disconnected */
    }
    if (audio.ctx.state !== "closed") await audio.ctx.close().catch(() => {});
  }

  /** Resume a suspended AudioContext (call from a user gesture if `audio_state` says suspended). */
  resumeAudio() {
    if (this._audio && this._audio.ctx.state === "suspended") return this._audio.ctx.resume();
    return Promise.resolve();
  }

  _postPlayback(message) {
    if (this._audio && this._audio.playback) this._audio.playback.port.postMessage(message);
  }

  _flushPlayback() {
    if (!this._audio || !this._audio.playback) return Promise.resolve(null);
    const id = (this._flushSeq = (this._flushSeq || 0) + 1);
    if (!this._flushWaiters) this._flushWaiters = new Map();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this._flushWaiters.delete(id);
        resolve(null); // audio thread suspended: fall back to the last stats
      }, 80);
      this._flushWaiters.set(id, (ack) => {
        clearTimeout(timer);
        resolve(ack);
      });
      this._audio.playback.port.postMessage({ type: "flush", id });
    });
  }

  _onPlaybackMessage(msg) {
    const p = this.debug.playback;
    const rate = p.sampleRate || 48000;
    switch (msg.type) {
      case "stats": {
        p.samplesPlayed = msg.samplesPlayed;
        p.underruns = msg.underruns;
        p.buffered = msg.buffered;
        p.currentItem = msg.currentItem;
        p.level = msg.playing ? msg.rms : 0;
        const items = {};
        for (const [id, samples] of Object.entries(msg.items)) items[id] = Math.round((samples / rate) * 1000);
        p.playedMsByItem = items;
        this._setPlaybackPlaying(!!msg.playing);
        break;
      }
      case "started":
        p.startedAt = performance.now();
        this._setPlaybackPlaying(true);
        break;
      case "drained":
        p.buffered = 0;
        p.level = 0;
        this._setPlaybackPlaying(false);
        break;
      case "underrun":
        p.underruns = msg.underruns;
        break;
      case "flush-ack": {
        const waiter = this._flushWaiters && this._flushWaiters.get(msg.id);
        if (waiter) {
          this._flushWaiters.delete(msg.id);
          waiter(msg);
        }
        break;
      }
      case "flushed": {
        const now = performance.now();
        p.buffered = 0;
        p.level = 0;
        if (typeof msg.samplesPlayed === "number") p.samplesPlayed = msg.samplesPlayed;
        p.lastFlushAt = now;
        p.lastSilentAt = this._audioTimeToPerformance(msg.time) ?? now;
        const asked = this.debug.interruptRequestedContextTime;
        if (msg.wasPlaying && typeof asked === "number" && typeof msg.time === "number") {
          p.lastStopLatencyMs = Math.max(0, (msg.time - asked) * 1000);
        }
        this._setPlaybackPlaying(false);
        this._emit({ type: "playback_flushed", at: now, wasPlaying: msg.wasPlaying });
        break;
      }
      default:
        break;
    }
  }

  _audioTimeToPerformance(contextTime) {
    const ctx = this._audio && this._audio.ctx;
    if (!ctx || typeof ctx.getOutputTimestamp !== "function") return null;
    const ts = ctx.getOutputTimestamp();
    if (!ts || !ts.performanceTime) return null;
    // getOutputTimestamp pairs the frame the speaker plays now with performance.now(): the
    // frame at `contextTime` is heard that much later (or earlier).
    return ts.performanceTime + (contextTime - ts.contextTime) * 1000;
  }

  _onCaptureMessage(msg) {
    if (msg.type !== "frame") return;
    const c = this.debug.capture;
    c.framesCaptured += 1;
    c.level = msg.rms;
    if (c.framesCaptured % 2 === 0) this._emit({ type: "level", rms: msg.rms });
    if (this.turnMode === "manual" && !this._pttActive) return;
    if (!this._session) {
      // Not ready yet: keep the first seconds so words spoken right after Start are not lost.
      if (this._status === "connecting") {
        this._earlyFrames.push(msg.pcm);
        if (this._earlyFrames.length * 20 > this.earlyAudioMs) this._earlyFrames.shift();
      }
      return;
    }
    this._sendFrame(msg.pcm);
  }

  _sendFrame(pcm) {
    const c = this.debug.capture;
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (this._localPaused) {
      if (ws.bufferedAmount < this.bufferedAmountLimit / 2) {
        this._localPaused = false;
        this._updateBackpressure();
      }
    } else if (ws.bufferedAmount > this.bufferedAmountLimit) {
      this._localPaused = true;
      this._updateBackpressure();
    }
    if (this._localPaused || this._serverPaused) {
      c.framesDropped += 1;
      return;
    }
    ws.send(pcm);
    c.framesSent += 1;
  }
}

// -------------------------------------------------------------------- helpers

function normalizeOptions(options) {
  const o = { ...options };
  let td = o.turnDetection;
  if (typeof td === "string") td = { mode: td };
  td = { mode: "server_vad", ...(td || {}) };
  if (td.mode !== "manual") td.mode = "server_vad";
  return {
    ...o,
    turnDetection: td,
    inputRate: o.inputRate || 24000,
    outputRate: o.outputRate || 24000,
    microphone: o.microphone !== false,
    playback: o.playback !== false,
    echoCancellation: o.echoCancellation !== false,
    noiseSuppression: o.noiseSuppression !== false,
    autoGainControl: o.autoGainControl !== false,
  };
}

/** Accept ws(s)://, http(s):// or a path; default to this page's host at /ws. */
export function resolveSocketUrl(url) {
  const loc = globalThis.location;
  if (!url) {
    if (!loc) throw new VoxgateError("bad_request", "Pass the server URL: new VoxgateClient({url})");
    return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
  }
  const parsed = new URL(url, loc ? loc.href : undefined);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  return parsed.toString();
}

function closeCodeToError(code) {
  return (
    {
      1008: "bad_request",
      1009: "payload_too_large",
      4401: "unauthorized",
      4403: "forbidden_origin",
      4408: "timeout",
      4429: "session_limit",
      4502: "upstream_unavailable",
      4503: "engine_unavailable",
    }[code] || "disconnected"
  );
}

function base64ToArrayBuffer(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out.buffer;
}

function pushBounded(list, item, max) {
  list.push(item);
  if (list.length > max) list.splice(0, list.length - max);
}
