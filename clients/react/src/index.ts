// @voxgate/react: useVoxgate(), one voice conversation per component.
//
// Rules this hook keeps, because React and Next.js apps rely on them:
// - nothing touches `window` at import or render time: a client is created in `start()`
//   (a click), so the hook renders on the server and hydrates without a mismatch;
// - an options object created anew on every render changes nothing: options are read when
//   they are needed (start, each connection's token), never used as effect dependencies;
// - strict mode's mount/unmount/mount holds no session open, and a real unmount stops the
//   session: socket closed, microphone tracks stopped, AudioContext closed;
// - components re-render when what they show changes, not per audio frame.

import {
  VoxgateClient,
  VoxgateError,
  type ClientOptions,
  type InterruptResult,
  type SessionReady,
  type StartOptions,
  type TurnMode,
} from "@voxgate/client";
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { VoxgateStore, type VoxgateSnapshot } from "./store";

export { VoxgateStore, INITIAL_SNAPSHOT } from "./store";
export type { TranscriptTurn, VoxgateSnapshot } from "./store";

export interface UseVoxgateOptions extends ClientOptions {
  /** Defaults for `start()`; options passed to `start()` win. */
  startOptions?: StartOptions;
}

export interface UseVoxgateResult extends VoxgateSnapshot {
  /** Open the session (call from a click). Resolves to `session_ready`, or null when it failed
   * (the reason is in `error`) or was stopped meanwhile. Never rejects. */
  start(options?: StartOptions): Promise<SessionReady | null>;
  /** End the session and release the microphone. */
  stop(): Promise<void>;
  /** Cut the assistant off now; resolves to what was heard of the cut item. */
  interrupt(): Promise<InterruptResult | null>;
  /** Cut it off whatever the engine decided (`barge_in`); refused by the gateway when nothing plays. */
  bargeIn(): Promise<InterruptResult | null>;
  /** Keep the assistant from answering until `allowNext()` (engines with `capabilities.turnControl`). */
  hold(): void;
  /** Release `hold()`; `respond`: answer now everything said meanwhile. */
  allowNext(respond?: boolean): void;
  /** Send typed text as the user's turn; a refusal goes to `error`. */
  sendUserMessage(text: string): Promise<void>;
  sendContextUpdate(context: Record<string, unknown>): void;
  /** Manual turn end (push-to-talk mode). */
  commit(): void;
  startTalking(): void;
  stopTalking(): void;
  setTurnMode(mode: TurnMode): Promise<void>;
  setMuted(muted: boolean): void;
  setVolume(volume: number): void;
  /** The client of the current (or last) session, for what the hook does not wrap. */
  readonly client: VoxgateClient | null;
}

export function useVoxgate(options: UseVoxgateOptions = {}): UseVoxgateResult {
  const [store] = useState(() => new VoxgateStore());
  const snapshot = useSyncExternalStore(store.subscribe, store.getSnapshot, store.getServerSnapshot);

  // The latest options, read at use time (not a dependency: a new object per render is normal).
  const optionsRef = useRef(options);
  optionsRef.current = options;

  const clientRef = useRef<VoxgateClient | null>(null);
  const detachRef = useRef<(() => void) | null>(null);
  const mountedRef = useRef(false);

  useEffect(() => {
    mountedRef.current = true;
    return () => {
      // Unmount (or strict mode's rehearsal of one): end whatever session this component
      // opened, so no microphone or socket outlives it.
      mountedRef.current = false;
      const client = clientRef.current;
      detachRef.current?.();
      detachRef.current = null;
      clientRef.current = null;
      if (client) void client.stop();
    };
  }, []);

  const fail = useCallback(
    (err: unknown) => {
      const error = err instanceof VoxgateError ? err : new VoxgateError("internal", err instanceof Error ? err.message : String(err));
      if (mountedRef.current) store.update({ error });
    },
    [store],
  );

  const start = useCallback(
    async (startOptions?: StartOptions): Promise<SessionReady | null> => {
      if (!mountedRef.current) return null;
      const previous = clientRef.current;
      if (previous && previous.status !== "disconnected") {
        fail(new VoxgateError("bad_request", "The session is already running; stop it first."));
        return null;
      }
      detachRef.current?.();
      // A fresh client per session: it picks up the current url and options.
      const { startOptions: defaults, token: _token, ...clientOptions } = optionsRef.current;
      let client: VoxgateClient;
      try {
        client = new VoxgateClient({
          ...clientOptions,
          // Resolved at each connection, so a token function from the latest render is used
          // (and single-use tokens are minted anew for every reconnect).
          token: async () => {
            const source = optionsRef.current.token ?? null;
            return typeof source === "function" ? source() : source;
          },
        });
      } catch (err) {
        fail(err);
        return null;
      }
      clientRef.current = client;
      if (store.getSnapshot().muted) client.setMuted(true); // muted before the session began
      store.reset({ conversationId: null });
      detachRef.current = store.attach(client);
      try {
        return await client.start({ ...defaults, ...startOptions });
      } catch (err) {
        if (clientRef.current === client) fail(err);
        return null;
      }
    },
    [store, fail],
  );

  const stop = useCallback(async () => {
    const client = clientRef.current;
    if (client) await client.stop();
  }, []);

  const interrupt = useCallback(async () => {
    const client = clientRef.current;
    if (!client || client.status === "disconnected") return null;
    try {
      return await client.interrupt();
    } catch (err) {
      fail(err);
      return null;
    }
  }, [fail]);

  const bargeIn = useCallback(async () => {
    const client = clientRef.current;
    if (!client || client.status === "disconnected") return null;
    try {
      return await client.bargeIn();
    } catch (err) {
      fail(err);
      return null;
    }
  }, [fail]);

  const sendUserMessage = useCallback(
    async (text: string) => {
      const client = clientRef.current;
      try {
        if (!client) throw new VoxgateError("not_started", "Not connected yet: press Start first.");
        await client.sendUserMessage(text);
      } catch (err) {
        fail(err);
      }
    },
    [fail],
  );

  const guarded = useCallback(
    (action: (client: VoxgateClient) => void) => {
      const client = clientRef.current;
      try {
        if (!client) throw new VoxgateError("not_started", "Not connected yet: press Start first.");
        action(client);
      } catch (err) {
        fail(err);
      }
    },
    [fail],
  );

  const sendContextUpdate = useCallback((context: Record<string, unknown>) => guarded((c) => c.sendContextUpdate(context)), [guarded]);
  const commit = useCallback(() => guarded((c) => c.commit()), [guarded]);
  const hold = useCallback(() => guarded((c) => c.hold()), [guarded]);
  const allowNext = useCallback((respond = false) => guarded((c) => c.allowNext(respond)), [guarded]);
  const startTalking = useCallback(() => clientRef.current?.startTalking(), []);
  const stopTalking = useCallback(() => clientRef.current?.stopTalking(), []);
  const setTurnMode = useCallback(
    async (mode: TurnMode) => {
      try {
        await clientRef.current?.setTurnMode(mode);
      } catch (err) {
        fail(err);
      }
    },
    [fail],
  );
  const setMuted = useCallback(
    (muted: boolean) => {
      clientRef.current?.setMuted(muted);
      store.update({ muted });
    },
    [store],
  );
  const setVolume = useCallback((volume: number) => clientRef.current?.setVolume(volume), []);

  const actions = useMemo(
    () => ({
      start,
      stop,
      interrupt,
      bargeIn,
      hold,
      allowNext,
      sendUserMessage,
      sendContextUpdate,
      commit,
      startTalking,
      stopTalking,
      setTurnMode,
      setMuted,
      setVolume,
    }),
    [start, stop, interrupt, bargeIn, hold, allowNext, sendUserMessage, sendContextUpdate, commit, startTalking,
      stopTalking, setTurnMode, setMuted, setVolume],
  );

  return {
    ...snapshot,
    ...actions,
    get client() {
      return clientRef.current;
    },
  };
}
