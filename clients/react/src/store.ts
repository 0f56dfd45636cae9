// The conversation state a component renders, kept outside React so the hook can read it with
// useSyncExternalStore: one snapshot object, replaced only when a field really changes, so
// per-frame events (microphone level, playback stats) never re-render anything.

import type {
  AudioMode,
  ConnectionStatus,
  Floor,
  Role,
  VoxgateClient,
  VoxgateError,
  VoxgateEvent,
} from "@voxgate/client";

/** One turn of the conversation, keyed by the gateway's item id. */
export interface TranscriptTurn {
  role: Role;
  /** Everything recognised or said so far for this item. */
  text: string;
  /** The text is complete and will not change. */
  final: boolean;
  itemId: string;
  /** The assistant was cut off during this turn (by `interrupt()` or by the user talking over it). */
  interrupted: boolean;
}

export interface VoxgateSnapshot {
  status: ConnectionStatus;
  isConnected: boolean;
  /** The assistant is talking (generating or still playing). */
  isSpeaking: boolean;
  /** The gateway hears the user. */
  isUserSpeaking: boolean;
  /** Push-to-talk is held. */
  isTalking: boolean;
  /** Who has the floor, from the gateway's `turn` events ("idle", "user", "assistant", "paused"). */
  floor: Floor;
  /** The assistant is held (`hold()`), until `allowNext()`. */
  isHeld: boolean;
  /** The turns so far, in the order they first appeared. */
  transcript: readonly TranscriptTurn[];
  /** Text of the user's turn still being recognised ("" when none). */
  partial: string;
  /** The last error (a failed start, a refused message, a lost session); cleared by `start()`. */
  error: VoxgateError | null;
  /** Why audio is limited, as a sentence to show (e.g. the microphone was denied), or null. */
  audioNotice: string | null;
  audioMode: AudioMode;
  conversationId: string | null;
  muted: boolean;
  /** Reconnect attempt in progress, or null. */
  reconnectAttempt: number | null;
}

export const INITIAL_SNAPSHOT: VoxgateSnapshot = Object.freeze({
  status: "disconnected",
  isConnected: false,
  isSpeaking: false,
  isUserSpeaking: false,
  isTalking: false,
  floor: "idle",
  isHeld: false,
  transcript: Object.freeze([]) as readonly TranscriptTurn[],
  partial: "",
  error: null,
  audioNotice: null,
  audioMode: "none",
  conversationId: null,
  muted: false,
  reconnectAttempt: null,
}) as VoxgateSnapshot;

export class VoxgateStore {
  private snapshot: VoxgateSnapshot = INITIAL_SNAPSHOT;
  private readonly listeners = new Set<() => void>();
  /** Snapshots published (for tests: proves per-frame events cause no re-render). */
  publishes = 0;

  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  };

  readonly getSnapshot = (): VoxgateSnapshot => this.snapshot;

  readonly getServerSnapshot = (): VoxgateSnapshot => INITIAL_SNAPSHOT;

  /** Merge `patch`; publishes (and re-renders) only if some field actually changed. */
  update(patch: Partial<VoxgateSnapshot>): void {
    let changed = false;
    for (const key of Object.keys(patch) as Array<keyof VoxgateSnapshot>) {
      if (!Object.is(this.snapshot[key], patch[key])) {
        changed = true;
        break;
      }
    }
    if (!changed) return;
    const next = { ...this.snapshot, ...patch };
    next.isConnected = next.status === "connected";
    this.snapshot = next;
    this.publishes += 1;
    for (const listener of [...this.listeners]) listener();
  }

  /** A new session begins: forget the last one's turns and error. */
  reset(keep: Partial<VoxgateSnapshot> = {}): void {
    this.update({ transcript: INITIAL_SNAPSHOT.transcript, partial: "", error: null, audioNotice: null, ...keep });
  }

  /** Follow `client`'s events; returns the function that stops following. */
  attach(client: VoxgateClient): () => void {
    const sync = () =>
      this.update({
        status: client.status,
        isSpeaking: client.isSpeaking,
        isUserSpeaking: client.isUserSpeaking,
        isTalking: client.isTalking,
        floor: client.floor,
        isHeld: client.isHeld,
        audioMode: client.audioMode,
        conversationId: client.conversationId,
        muted: client.muted,
      });
    sync();
    return client.on((event) => this.onEvent(event, sync));
  }

  private onEvent(event: VoxgateEvent, sync: () => void): void {
    switch (event.type) {
      case "level":
      case "pong":
      case "playback_flushed":
        return; // per-frame or diagnostic: nothing a component shows changes
      case "transcript":
        this.onTranscript(event.role, event.itemId, event.text, event.final);
        return;
      case "interrupted":
        if (event.itemId) this.markInterrupted(event.itemId);
        sync();
        return;
      case "error":
        this.update({ error: event.error });
        sync();
        return;
      case "audio_unavailable":
        this.update({ audioNotice: event.message, audioMode: event.mode });
        return;
      case "reconnecting":
        this.update({ reconnectAttempt: event.attempt });
        return;
      case "status":
        if (event.status !== "reconnecting") this.update({ reconnectAttempt: null });
        sync();
        return;
      default:
        sync();
    }
  }

  private onTranscript(role: Role, itemId: string, text: string, final: boolean): void {
    const turns = this.snapshot.transcript;
    const index = turns.findIndex((t) => t.itemId === itemId);
    let next: TranscriptTurn[];
    if (index < 0) {
      next = [...turns, { role, text, final, itemId, interrupted: false }];
    } else {
      const old = turns[index]!;
      if (old.text === text && old.final === final) return;
      next = turns.slice();
      next[index] = { ...old, text, final };
    }
    const pending = [...next].reverse().find((t) => t.role === "user" && !t.final);
    this.update({ transcript: next, partial: pending ? pending.text : "" });
  }

  private markInterrupted(itemId: string): void {
    const turns = this.snapshot.transcript;
    const index = turns.findIndex((t) => t.itemId === itemId);
    if (index < 0 || turns[index]!.interrupted) return;
    const next = turns.slice();
    next[index] = { ...turns[index]!, interrupted: true };
    this.update({ transcript: next });
  }
}
