// The protocol state machine (ProtocolConnection) against a fake socket and fake timers:
// handshake, tokens, reconnect with jitter and resume, ping, and every way a session ends.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { DRAIN_JITTER_MS, ProtocolConnection, type ConnectionHooks } from "../src/connection";
import { VoxgateError } from "../src/errors";
import type { ConnectionStatus, ServerMessage, TokenSource } from "../src/types";
import { FakeSocket, sessionReady } from "./fake-socket";

interface Recorded {
  statuses: Array<[ConnectionStatus, string | null | undefined]>;
  messages: ServerMessage[];
  reconnecting: Array<{ attempt: number; attempts: number; delayMs: number }>;
  failed: VoxgateError[];
  dropped: number;
}

function makeConnection(
  options: { token?: TokenSource; random?: () => number; attempts?: number; pingIntervalMs?: number } = {},
) {
  const rec: Recorded = { statuses: [], messages: [], reconnecting: [], failed: [], dropped: 0 };
  const hooks: ConnectionHooks = {
    startMessage: () => ({ type: "start", binary: true, inputRate: 24000, outputRate: 24000, turnDetection: { mode: "server_vad" } }),
    status: (status, reason) => rec.statuses.push([status, reason]),
    ready: () => {},
    message: (message) => rec.messages.push(message),
    binary: () => {},
    dropped: () => {
      rec.dropped += 1;
    },
    reconnecting: (info) => rec.reconnecting.push(info),
    failed: (error) => rec.failed.push(error),
  };
  const connection = new ProtocolConnection(
    {
      url: "ws://gateway.test/ws",
      token: options.token ?? null,
      reconnect: { attempts: options.attempts ?? 5, baseMs: 1000, maxMs: 30000 },
      startTimeoutMs: 15000,
      pingIntervalMs: options.pingIntervalMs ?? 0,
      WebSocket: FakeSocket as unknown as typeof WebSocket,
      random: options.random ?? (() => 0.5),
    },
    hooks,
  );
  return { connection, rec };
}

/** Let pending promise callbacks (token resolution, close events) run. */
const settle = () => vi.advanceTimersByTimeAsync(0);

/** Open a connection and complete the handshake as the gateway would. */
async function openLive(connection: ProtocolConnection, conversationId = "conv-1") {
  const opened = connection.open();
  await settle();
  const socket = FakeSocket.last;
  socket.accept();
  socket.receive(sessionReady({ conversationId }));
  await opened;
  return socket;
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeSocket.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("handshake", () => {
  it("offers the voxgate subprotocol and the bearer token, sends start first, resolves on session_ready", async () => {
    const { connection, rec } = makeConnection({ token: "vxs_abc" });
    const opened = connection.open();
    await settle();
    const socket = FakeSocket.last;
    expect(socket.url).toBe("ws://gateway.test/ws");
    expect(socket.protocols).toEqual(["voxgate.v1", "voxgate.bearer.vxs_abc"]);
    expect(socket.binaryType).toBe("arraybuffer");
    expect(socket.sent).toEqual([]); // nothing before the socket opens
    socket.accept();
    expect(socket.json[0]).toMatchObject({ type: "start", binary: true, inputRate: 24000 });
    expect(connection.isOpen).toBe(false); // open socket, but no session yet
    socket.receive(sessionReady());
    const session = await opened;
    expect(session.conversationId).toBe("conv-1");
    expect(connection.isOpen).toBe(true);
    expect(rec.statuses.map((s) => s[0])).toEqual(["connecting", "connected"]);
  });

  it("without a token offers only the voxgate subprotocol", async () => {
    const { connection } = makeConnection();
    void connection.open();
    await settle();
    expect(FakeSocket.last.protocols).toEqual(["voxgate.v1"]);
  });

  it("refuses to send control messages before session_ready", async () => {
    const { connection } = makeConnection();
    void connection.open();
    await settle();
    FakeSocket.last.accept();
    expect(() => connection.send({ type: "commit" })).toThrowError(VoxgateError);
    try {
      connection.send({ type: "commit" });
    } catch (err) {
      expect((err as VoxgateError).code).toBe("not_started");
    }
  });

  it("rejects with the gateway's fatal error when the handshake is refused, and does not retry", async () => {
    const { connection, rec } = makeConnection({ token: "used" });
    const opened = connection.open();
    await settle();
    const socket = FakeSocket.last;
    socket.accept();
    socket.receive({ type: "error", code: "unauthorized", message: "token already used", fatal: true });
    socket.drop(4401);
    await expect(opened).rejects.toMatchObject({ code: "unauthorized", fatal: true, message: "token already used" });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.instances).toHaveLength(1);
    expect(rec.reconnecting).toEqual([]);
  });

  it("maps a close before session_ready without an error message to a sentence for the close code", async () => {
    const { connection } = makeConnection();
    const opened = connection.open();
    await settle();
    FakeSocket.last.drop(4429);
    await expect(opened).rejects.toMatchObject({ code: "session_limit", closeCode: 4429, fatal: true });
  });

  it("times out when session_ready never comes", async () => {
    const { connection } = makeConnection();
    const opened = connection.open();
    const check = expect(opened).rejects.toMatchObject({ code: "timeout" });
    await settle();
    FakeSocket.last.accept();
    await vi.advanceTimersByTimeAsync(15_000);
    await check;
    expect(FakeSocket.last.closeCalls).toHaveLength(1);
  });

  it("fails with connect_failed when the token function throws, before opening any socket", async () => {
    const { connection } = makeConnection({
      token: async () => {
        throw new Error("mint endpoint down");
      },
    });
    await expect(connection.open()).rejects.toMatchObject({ code: "connect_failed" });
    expect(FakeSocket.instances).toHaveLength(0);
  });
});

describe("reconnect and resume", () => {
  it("reconnects after a network drop with a jittered delay and resumes the same conversation with a fresh token", async () => {
    let minted = 0;
    const { connection, rec } = makeConnection({ token: () => `vxs_${++minted}`, random: () => 0.5 });
    const first = await openLive(connection, "conv-42");
    expect(first.protocols[1]).toBe("voxgate.bearer.vxs_1");

    first.drop(1006);
    expect(rec.dropped).toBe(1);
    expect(rec.statuses.at(-1)?.[0]).toBe("reconnecting");
    // Equal jitter: delay/2 + random*delay/2 = 500 + 0.5*500 for the first attempt.
    expect(rec.reconnecting).toEqual([{ attempt: 1, attempts: 5, delayMs: 750 }]);
    await vi.advanceTimersByTimeAsync(749);
    expect(FakeSocket.instances).toHaveLength(1); // not before the delay
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeSocket.instances).toHaveLength(2);
    const second = FakeSocket.last;
    expect(second.protocols[1]).toBe("voxgate.bearer.vxs_2"); // single-use tokens: a new one
    second.accept();
    expect(second.json[0]).toMatchObject({ type: "start", conversationId: "conv-42" });
    second.receive(sessionReady({ conversationId: "conv-42" }));
    await settle();
    expect(connection.isOpen).toBe(true);
    expect(rec.statuses.at(-1)?.[0]).toBe("connected");
    expect(connection.reconnects).toBe(1);
  });

  it("goes at once (within DRAIN_JITTER_MS) after a draining node says server_shutdown, then backs off as usual", async () => {
    const { connection, rec } = makeConnection({ random: () => 0.5 });
    const first = await openLive(connection, "conv-7");
    first.receive({ type: "status", status: "disconnected", reason: "server_shutdown" });
    first.drop(1001);
    await settle();
    expect(rec.reconnecting).toEqual([{ attempt: 1, attempts: 5, delayMs: DRAIN_JITTER_MS / 2 }]);
    await vi.advanceTimersByTimeAsync(DRAIN_JITTER_MS / 2);
    expect(FakeSocket.instances).toHaveLength(2);
    FakeSocket.last.drop(1006); // the balancer had nowhere to send it yet: normal backoff now
    await settle();
    expect(rec.reconnecting[1]).toEqual({ attempt: 2, attempts: 5, delayMs: 1500 });
    await vi.advanceTimersByTimeAsync(1500);
    const second = FakeSocket.last;
    second.accept();
    expect(second.json[0]).toMatchObject({ type: "start", conversationId: "conv-7" });
    second.receive(sessionReady({ conversationId: "conv-7" }));
    await settle();
    expect(connection.isOpen).toBe(true);
    // A later plain drop (no drain said) waits the usual jittered delay again.
    second.drop(1006);
    await settle();
    expect(rec.reconnecting.at(-1)).toEqual({ attempt: 1, attempts: 5, delayMs: 750 });
  });

  it("doubles the delay per attempt within the jitter bounds, and gives up after the last attempt", async () => {
    const draws = [0, 1, 0, 1];
    const { connection, rec } = makeConnection({ random: () => draws.shift() ?? 0, attempts: 4 });
    const first = await openLive(connection);
    first.drop(1012);
    for (let attempt = 1; attempt <= 4; attempt++) {
      const delay = rec.reconnecting[attempt - 1]!.delayMs;
      const full = 1000 * 2 ** (attempt - 1);
      expect(delay).toBeGreaterThanOrEqual(full / 2);
      expect(delay).toBeLessThanOrEqual(full);
      await vi.advanceTimersByTimeAsync(delay);
      FakeSocket.last.drop(1006); // the server is still down: the attempt fails
      await settle();
    }
    expect(rec.reconnecting.map((r) => r.delayMs)).toEqual([500, 2000, 2000, 8000]);
    expect(rec.failed).toHaveLength(1);
    expect(rec.failed[0]).toMatchObject({ code: "disconnected", fatal: true });
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeSocket.instances).toHaveLength(5); // first + 4 attempts, then nothing
  });

  it("does not reconnect after a close that retrying cannot fix", async () => {
    const { connection, rec } = makeConnection();
    const socket = await openLive(connection);
    socket.drop(4408); // idle timeout
    expect(rec.failed).toHaveLength(1);
    expect(rec.failed[0]).toMatchObject({ code: "timeout", closeCode: 4408 });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.instances).toHaveLength(1);
  });

  it("says a session that reached its maximum duration expired, not that it was idle", async () => {
    const { connection, rec } = makeConnection();
    const socket = await openLive(connection);
    socket.drop(4409);
    expect(rec.failed).toHaveLength(1);
    expect(rec.failed[0]).toMatchObject({ code: "session_expired", closeCode: 4409, fatal: true });
    expect(rec.failed[0].message).toContain("maximum length");
    expect(rec.failed[0].message).not.toContain("idle");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.instances).toHaveLength(1);
  });

  it("does not reconnect when a fatal non-retryable error preceded a retryable close code", async () => {
    const { connection, rec } = makeConnection();
    const socket = await openLive(connection);
    socket.receive({ type: "error", code: "upstream_unavailable", message: "provider gave up", fatal: true });
    socket.drop(1011);
    expect(rec.failed[0]).toMatchObject({ code: "upstream_unavailable", message: "provider gave up" });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.instances).toHaveLength(1);
  });

  it("close() during the reconnect wait cancels it for good", async () => {
    const { connection, rec } = makeConnection();
    const socket = await openLive(connection);
    socket.drop(1006);
    connection.close();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.instances).toHaveLength(1);
    expect(rec.failed).toEqual([]);
  });
});

describe("closing", () => {
  it("close() sends stop, closes with 1000, and the close event does not count as a drop", async () => {
    const { connection, rec } = makeConnection();
    const socket = await openLive(connection);
    connection.close();
    expect(socket.json.at(-1)).toEqual({ type: "stop" });
    expect(socket.closeCalls[0]).toMatchObject({ code: 1000 });
    await settle();
    expect(rec.dropped).toBe(0);
    expect(connection.isOpen).toBe(false);
    expect(() => connection.send({ type: "commit" })).toThrow(VoxgateError);
  });

  it("close() while connecting rejects the pending open with 'stopped'", async () => {
    const { connection } = makeConnection();
    const opened = connection.open();
    await settle();
    connection.close();
    await expect(opened).rejects.toMatchObject({ code: "stopped" });
  });

  it("restart() opens a new session on the same conversation without reporting a drop", async () => {
    const { connection, rec } = makeConnection();
    const first = await openLive(connection, "conv-7");
    const restarted = connection.restart("turn_mode");
    await settle();
    expect(first.json.at(-1)).toEqual({ type: "stop" });
    const second = FakeSocket.last;
    expect(second).not.toBe(first);
    second.accept();
    expect(second.json[0]).toMatchObject({ conversationId: "conv-7" });
    second.receive(sessionReady({ conversationId: "conv-7" }));
    await restarted;
    expect(rec.dropped).toBe(0);
    expect(rec.reconnecting).toEqual([]);
  });
});

describe("keep-alive", () => {
  it("pings every interval and treats a ping unanswered for a whole interval as a dead connection", async () => {
    const { connection, rec } = makeConnection({ pingIntervalMs: 20_000 });
    const socket = await openLive(connection);
    await vi.advanceTimersByTimeAsync(20_000);
    const pings = () => socket.json.filter((m) => m.type === "ping");
    expect(pings()).toHaveLength(1);
    socket.receive({ type: "pong", id: pings()[0]!.id as number });
    await vi.advanceTimersByTimeAsync(20_000);
    expect(pings()).toHaveLength(2); // answered: the next ping goes out, no reconnect
    expect(rec.reconnecting).toEqual([]);
    await vi.advanceTimersByTimeAsync(20_000); // the second ping was never answered
    expect(socket.closeCalls.length).toBeGreaterThan(0);
    expect(rec.dropped).toBe(1);
    expect(rec.reconnecting).toHaveLength(1);
  });

  it("any message counts as proof of life, not only pongs", async () => {
    const { connection, rec } = makeConnection({ pingIntervalMs: 20_000 });
    const socket = await openLive(connection);
    await vi.advanceTimersByTimeAsync(20_000); // ping sent
    await vi.advanceTimersByTimeAsync(19_000);
    socket.receive({ type: "user_speaking", isSpeaking: true });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(rec.dropped).toBe(0);
  });
});

describe("messages", () => {
  it("passes parsed messages and ignores frames that are not protocol messages", async () => {
    const { connection, rec } = makeConnection();
    const socket = await openLive(connection);
    rec.messages.length = 0;
    socket.onmessage?.({ data: "not json" } as MessageEvent);
    socket.onmessage?.({ data: JSON.stringify({ no: "type" }) } as MessageEvent);
    socket.receive({ type: "transcript", role: "user", itemId: "u1", text: "hi", final: true });
    expect(rec.messages).toEqual([{ type: "transcript", role: "user", itemId: "u1", text: "hi", final: true }]);
  });

  it("ignores events of a socket it already replaced", async () => {
    const { connection, rec } = makeConnection();
    const first = await openLive(connection);
    first.drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    const second = FakeSocket.last;
    second.accept();
    second.receive(sessionReady());
    await settle();
    const before = rec.messages.length;
    first.receive({ type: "transcript", role: "user", itemId: "old", text: "stale", final: true });
    expect(rec.messages).toHaveLength(before);
  });
});
