// The protocol connection: one voxgate session over a WebSocket, with everything that keeps it
// alive and nothing about audio. It owns the handshake (subprotocol + bearer token, `start`,
// wait for `session_ready`), a token fetched anew for every connection (single-use session
// tokens), reconnection with exponential backoff and equal jitter, resuming the same
// conversation after a reconnect, and the keep-alive ping that detects a dead-but-open socket.
//
// It is a state machine driven by socket events and timers only, so it is unit-tested with a
// fake socket and fake timers (clients/web/test/connection.test.ts).

import {
  CLOSE_SENTENCES,
  RETRYABLE_CLOSE_CODES,
  RETRYABLE_ERROR_CODES,
  VoxgateError,
  closeCodeToError,
} from "./errors";
import type {
  ClientMessage,
  ConnectionStatus,
  ReconnectPolicy,
  ServerMessage,
  SessionReady,
  TokenSource,
  WebSocketConstructor,
} from "./types";

export const PROTOCOL_VERSION = 1;
export const SUBPROTOCOL = "voxgate.v1";
export const BEARER_SUBPROTOCOL_PREFIX = "voxgate.bearer.";

/** What the connection tells its owner (the client). */
export interface ConnectionHooks {
  /** The `start` message to send on every (re)connection; `conversationId` is added here. */
  startMessage(): Extract<ClientMessage, { type: "start" }>;
  status(status: ConnectionStatus, reason?: string | null): void;
  /** A `session_ready` arrived: set up the session's state (rates, early audio) before anything else hears of it. */
  ready(session: SessionReady): void;
  /** Every parsed JSON message (`session_ready` last, after `ready` and the status). */
  message(message: ServerMessage): void;
  /** A binary frame (assistant audio when `binary: true`). */
  binary(data: ArrayBuffer): void;
  /** The live connection dropped unexpectedly; per-connection state should be cleared. */
  dropped(): void;
  reconnecting(info: { attempt: number; attempts: number; delayMs: number }): void;
  /** The session is over for good (not after `close()`): tell the user why. */
  failed(error: VoxgateError): void;
  /** A message was sent (for the debug log). */
  sent?(message: ClientMessage): void;
}

export interface ConnectionOptions {
  url: string;
  token: TokenSource;
  reconnect: ReconnectPolicy;
  startTimeoutMs: number;
  pingIntervalMs: number;
  WebSocket: WebSocketConstructor;
  /** Injected for tests: jitter source and clock. */
  random?: () => number;
  now?: () => number;
}

interface Waiter {
  resolve(session: SessionReady): void;
  reject(error: VoxgateError): void;
}

type CloseInfo = { code: number; reason?: string };

/** The spread of the first reconnect after a drain (`server_shutdown`): the clients of one
 * drained node do not all land on the next at the same instant. */
export const DRAIN_JITTER_MS = 250;

export class ProtocolConnection {
  readonly url: string;
  token: TokenSource;
  private readonly opts: ConnectionOptions;
  private readonly hooks: ConnectionHooks;
  private readonly random: () => number;
  private readonly now: () => number;

  private ws: WebSocket | null = null;
  /** Bumps on every open/close/failure, so stale async work (a late handshake, a sleeping
   * reconnect loop) can tell that it lost and must not touch the current state. */
  private gen = 0;
  private waiter: Waiter | null = null;
  private closedByUser = true;
  /** The last fatal `error` the gateway sent on this connection: it explains the close. */
  private lastFatal: { code: string; message: string } | null = null;
  /** The server said it is going away to drain (`status: disconnected`, `server_shutdown`):
   * the other nodes behind the balancer are up, so the first attempt goes at once. */
  private serverDraining = false;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private pingSentAt: number | null = null;
  private lastMessageAt = 0;
  private sleeper: (() => void) | null = null;
  private _session: SessionReady | null = null;
  /** The conversation to resume on the next connection (from the last `session_ready`). */
  conversationId: string | null = null;
  /** Reconnect attempts made so far (all sessions). */
  reconnects = 0;

  constructor(opts: ConnectionOptions, hooks: ConnectionHooks) {
    this.opts = opts;
    this.url = opts.url;
    this.token = opts.token;
    this.hooks = hooks;
    this.random = opts.random ?? Math.random;
    this.now = opts.now ?? (() => Date.now());
  }

  /** The `session_ready` of the live connection, or null. */
  get session(): SessionReady | null {
    return this._session;
  }

  /** A session is live and messages can be sent. */
  get isOpen(): boolean {
    return !!this.ws && this.ws.readyState === this.opts.WebSocket.OPEN && !!this._session;
  }

  /** Bytes queued in the socket (for local backpressure on microphone audio). */
  get bufferedAmount(): number {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  /** Connect and wait for `session_ready`. A failure here is reported by rejection only (no
   * reconnect): the caller decides what a failed start means. */
  async open(conversationId: string | null = null): Promise<SessionReady> {
    this.closedByUser = false;
    this.conversationId = conversationId;
    const gen = ++this.gen;
    this.hooks.status("connecting");
    return this.connect(gen);
  }

  /** End the session: `stop`, close 1000, no reconnect. Safe to call at any time. */
  close(reason = "client stop"): void {
    this.closedByUser = true;
    this.gen += 1;
    this.cancelSleep();
    this.stopPing();
    const ws = this.ws;
    this.ws = null;
    this._session = null;
    if (ws) closeSocket(ws, this.opts.WebSocket, reason, (m) => this.hooks.sent?.(m));
    this.rejectWaiter(new VoxgateError("stopped", "The session was stopped."));
  }

  /** Close the live connection on purpose and open a new one on the same conversation
   * (e.g. turn detection is fixed per session, so switching it needs a new session). */
  async restart(reason: string): Promise<SessionReady> {
    const ws = this.ws;
    this.ws = null; // its close is ours: no reconnect
    this._session = null;
    this.stopPing();
    if (ws) closeSocket(ws, this.opts.WebSocket, reason, (m) => this.hooks.sent?.(m));
    this.hooks.status("connecting", reason);
    const gen = this.gen;
    try {
      return await this.connect(gen);
    } catch (err) {
      if (gen === this.gen) this.fail(asVoxgateError(err));
      throw err;
    }
  }

  /** Send a control message; throws `not_started` when no session is live. */
  send(message: ClientMessage): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== this.opts.WebSocket.OPEN || !this._session) {
      throw new VoxgateError("not_started", "Not connected yet: press Start first.");
    }
    ws.send(JSON.stringify(message));
    this.hooks.sent?.(message);
  }

  /** Send a binary frame (microphone audio); false when there is no live session. */
  sendBinary(data: ArrayBuffer): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== this.opts.WebSocket.OPEN || !this._session) return false;
    ws.send(data);
    return true;
  }

  // ------------------------------------------------------------------------ one connection

  private async connect(gen: number): Promise<SessionReady> {
    let token: string | null;
    try {
      token = await resolveToken(this.token);
    } catch (err) {
      throw new VoxgateError("connect_failed", `Could not get a token for the voice session: ${messageOf(err)}`);
    }
    if (gen !== this.gen) throw new VoxgateError("stopped", "The session was stopped.");
    return new Promise<SessionReady>((resolve, reject) => {
      const protocols = token ? [SUBPROTOCOL, BEARER_SUBPROTOCOL_PREFIX + token] : [SUBPROTOCOL];
      let ws: WebSocket;
      try {
        ws = new this.opts.WebSocket(this.url, protocols);
      } catch {
        reject(new VoxgateError("bad_request", `The server address is not valid: ${this.url}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.lastFatal = null;
      let settled = false;
      const waiter: Waiter = {
        resolve: (session) => settle(() => resolve(session)),
        reject: (error) => settle(() => reject(error)),
      };
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (this.waiter === waiter) this.waiter = null;
        fn();
      };
      this.waiter = waiter;
      const timer = setTimeout(() => {
        waiter.reject(new VoxgateError("timeout", "The server did not answer in time. Please try again."));
        if (this.ws === ws) this.ws = null;
        ws.close();
      }, this.opts.startTimeoutMs);

      ws.onopen = () => {
        if (this.ws !== ws) return;
        const start = this.hooks.startMessage();
        if (this.conversationId) start.conversationId = this.conversationId;
        ws.send(JSON.stringify(start));
        this.hooks.sent?.(start);
      };
      ws.onmessage = (event: MessageEvent) => {
        if (this.ws !== ws) return;
        this.onFrame(event.data);
      };
      ws.onerror = () => {
        /* the close event that follows carries the details */
      };
      ws.onclose = (event: CloseEvent) => {
        const wasCurrent = this.ws === ws;
        if (wasCurrent) this.ws = null;
        if (!settled) {
          waiter.reject(this.closeError(event, true));
          return;
        }
        if (wasCurrent && gen === this.gen) this.onUnexpectedClose(event);
      };
    });
  }

  private onFrame(data: unknown): void {
    this.lastMessageAt = this.now();
    if (typeof data !== "string") {
      if (data instanceof ArrayBuffer) this.hooks.binary(data);
      return;
    }
    let msg: ServerMessage;
    try {
      msg = JSON.parse(data) as ServerMessage;
    } catch {
      return; // not ours to judge: the protocol says ignore what you cannot read
    }
    if (!msg || typeof msg.type !== "string") return;
    if (msg.type === "session_ready") {
      this.onReady(msg);
      return;
    }
    if (msg.type === "error" && msg.fatal) {
      this.lastFatal = { code: msg.code, message: msg.message };
      this.rejectWaiter(new VoxgateError(msg.code, msg.message, { fatal: true }));
    }
    if (msg.type === "pong") this.pingSentAt = null;
    if (msg.type === "status" && msg.status === "disconnected" && msg.reason === "server_shutdown") {
      this.serverDraining = true;
    }
    this.hooks.message(msg);
  }

  private onReady(msg: SessionReady): void {
    this._session = msg;
    this.conversationId = msg.conversationId || this.conversationId;
    this.lastFatal = null;
    this.startPing();
    const waiter = this.waiter;
    this.hooks.ready(msg);
    if (waiter) waiter.resolve(msg);
    this.hooks.status("connected");
    this.hooks.message(msg); // listeners hear `ready` after the status says connected
  }

  private rejectWaiter(error: VoxgateError): void {
    if (this.waiter) this.waiter.reject(error);
  }

  private closeError(event: CloseInfo, beforeReady: boolean): VoxgateError {
    if (this.lastFatal) {
      return new VoxgateError(this.lastFatal.code, this.lastFatal.message, { fatal: true, closeCode: event.code });
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

  /** Whether another connection attempt can help after this error or close. */
  private isRetryable(error: VoxgateError | CloseInfo): boolean {
    if (this.closedByUser) return false;
    if (this.lastFatal && !RETRYABLE_ERROR_CODES.has(this.lastFatal.code)) return false;
    const closeCode = error instanceof VoxgateError ? error.closeCode : error.code;
    if (typeof closeCode === "number") return RETRYABLE_CLOSE_CODES.has(closeCode);
    const code = (error as VoxgateError).code;
    return code === "upstream_unavailable" || code === "timeout" || code === "connect_failed";
  }

  private onUnexpectedClose(event: CloseInfo): void {
    this.stopPing();
    this._session = null;
    this.hooks.dropped();
    if (this.closedByUser) return;
    if (this.isRetryable(event)) {
      void this.reconnect(event.reason || `closed (${event.code})`);
    } else {
      this.fail(this.closeError(event, false));
    }
  }

  private async reconnect(reason: string): Promise<void> {
    const gen = this.gen;
    const { attempts, baseMs, maxMs } = this.opts.reconnect;
    this.hooks.status("reconnecting", reason);
    const draining = this.serverDraining;
    this.serverDraining = false;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      const delay = Math.min(maxMs, baseMs * 2 ** (attempt - 1));
      // Equal jitter (as the gateway's ReconnectPolicy): at least half the delay, never more,
      // so a gateway restart is not met by every client at the same instant. A draining node
      // is the exception for the first attempt: the balancer sends it to a node that is up,
      // so it goes at once, spread over DRAIN_JITTER_MS only.
      const wait =
        draining && attempt === 1
          ? this.random() * DRAIN_JITTER_MS
          : delay / 2 + (this.random() * delay) / 2;
      this.hooks.reconnecting({ attempt, attempts, delayMs: Math.round(wait) });
      const slept = await this.sleep(wait);
      if (!slept || gen !== this.gen || this.closedByUser) return;
      try {
        this.reconnects += 1;
        await this.connect(gen); // resumes: the start carries the conversationId
        return;
      } catch (err) {
        if (gen !== this.gen) return;
        const error = asVoxgateError(err);
        if (!this.isRetryable(error)) {
          this.fail(error);
          return;
        }
        this.hooks.status("reconnecting", reason);
      }
    }
    this.fail(
      new VoxgateError(
        "disconnected",
        `Lost the connection to the server and could not reconnect after ${attempts} attempts. Press Start to try again.`,
        { fatal: true },
      ),
    );
  }

  private sleep(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.sleeper = null;
        resolve(true);
      }, ms);
      this.sleeper = () => {
        clearTimeout(timer);
        this.sleeper = null;
        resolve(false);
      };
    });
  }

  private cancelSleep(): void {
    if (this.sleeper) this.sleeper();
  }

  /** The session is over for good: close, tell the owner why. */
  private fail(error: VoxgateError): void {
    this.gen += 1;
    this.closedByUser = true; // nothing may revive it: the next start() opens anew
    this.cancelSleep();
    this.stopPing();
    const ws = this.ws;
    this.ws = null;
    this._session = null;
    if (ws) ws.close();
    this.hooks.failed(error);
  }

  private startPing(): void {
    this.stopPing();
    const interval = this.opts.pingIntervalMs;
    if (!interval) return;
    this.pingTimer = setInterval(() => {
      const ws = this.ws;
      if (!ws || ws.readyState !== this.opts.WebSocket.OPEN) return;
      const quietFor = this.now() - this.lastMessageAt;
      if (this.pingSentAt !== null && quietFor > interval) {
        // A ping went unanswered for a whole interval: the connection is dead but not closed.
        this.ws = null;
        ws.close();
        this.onUnexpectedClose({ code: 1006, reason: "no answer to ping" });
        return;
      }
      this.pingSentAt = this.now();
      const ping: ClientMessage = { type: "ping", id: Math.round(this.pingSentAt) };
      ws.send(JSON.stringify(ping));
    }, interval);
  }

  private stopPing(): void {
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    this.pingTimer = null;
    this.pingSentAt = null;
  }
}

function closeSocket(
  ws: WebSocket,
  Ctor: WebSocketConstructor,
  reason: string,
  logSent: (message: ClientMessage) => void,
): void {
  if (ws.readyState === Ctor.OPEN) {
    try {
      ws.send(JSON.stringify({ type: "stop" }));
      logSent({ type: "stop" });
    } catch {
      /* closing anyway */
    }
    ws.close(1000, reason);
  } else if (ws.readyState === Ctor.CONNECTING) {
    ws.close();
  }
}

async function resolveToken(source: TokenSource): Promise<string | null> {
  if (typeof source === "function") return (await source()) || null;
  return source || null;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function asVoxgateError(err: unknown): VoxgateError {
  if (err instanceof VoxgateError) return err;
  return new VoxgateError("internal", messageOf(err));
}
