// The public client over a fake socket, text-only (no audio in Node): lifecycle, typed
// events, the ConversationEngine surface, item bookkeeping and errors.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { VoxgateClient, VoxgateError, type ConversationEngine, type VoxgateEvent } from "../src/index";
import { FakeSocket, sessionReady } from "./fake-socket";

const settle = () => vi.advanceTimersByTimeAsync(0);

function makeClient(token?: string | (() => Promise<string>)) {
  const client = new VoxgateClient({
    url: "http://gateway.test/ws",
    token: token ?? null,
    WebSocket: FakeSocket as unknown as typeof WebSocket,
    pingIntervalMs: 0,
  });
  const events: VoxgateEvent[] = [];
  client.on((event) => events.push(event));
  return { client, events };
}

async function startLive(client: VoxgateClient) {
  const started = client.start({ microphone: false, playback: false, instructions: "be brief" });
  await settle();
  const socket = FakeSocket.last;
  socket.accept();
  socket.receive(sessionReady());
  await started;
  return socket;
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeSocket.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("VoxgateClient", () => {
  it("is a ConversationEngine", () => {
    const { client } = makeClient();
    const engine: ConversationEngine = client; // compile-time check, and the members exist
    expect(engine.status).toBe("disconnected");
    expect(engine.isSpeaking).toBe(false);
    expect(engine.capabilities).toBeNull();
  });

  it("turns http:// into ws:// and starts with the options in the start message", async () => {
    const { client, events } = makeClient();
    expect(client.url).toBe("ws://gateway.test/ws");
    const socket = await startLive(client);
    const start = socket.json[0]!;
    expect(start).toEqual({
      type: "start",
      inputRate: 24000,
      outputRate: 24000,
      binary: true,
      turnDetection: { mode: "server_vad" },
      instructions: "be brief",
    });
    expect(client.status).toBe("connected");
    expect(client.audioMode).toBe("text");
    expect(client.capabilities).toEqual({ audioIn: true, audioOut: true, tools: false, serverVad: true });
    const types = events.map((e) => e.type);
    expect(types.indexOf("status")).toBeLessThan(types.indexOf("ready"));
  });

  it("sends the engine and model it is given", async () => {
    const { client } = makeClient();
    const started = client.start({ microphone: false, playback: false, engine: "openai", model: "gpt-realtime-mini" });
    await settle();
    const socket = FakeSocket.last;
    socket.accept();
    socket.receive(sessionReady());
    await started;
    expect(socket.json[0]).toMatchObject({ type: "start", engine: "openai", model: "gpt-realtime-mini" });
  });

  it("refuses a second start while running", async () => {
    const { client } = makeClient();
    await startLive(client);
    await expect(client.start()).rejects.toBeInstanceOf(VoxgateError);
  });

  it("sends typed text, context and commit only while connected", async () => {
    const { client } = makeClient();
    await expect(client.sendUserMessage("hi")).rejects.toMatchObject({ code: "not_started" });
    const socket = await startLive(client);
    await client.sendUserMessage("  what time is it ");
    client.sendContextUpdate({ page: "checkout" });
    client.commit();
    expect(socket.json.slice(1)).toEqual([
      { type: "user_message", text: "what time is it" },
      { type: "context_update", payload: { page: "checkout" } },
      { type: "commit" },
    ]);
    await expect(client.sendUserMessage("   ")).rejects.toMatchObject({ code: "bad_request" });
    expect(() => client.sendContextUpdate([] as unknown as Record<string, unknown>)).toThrow(VoxgateError);
  });

  it("typed listeners get only their event type, and unsubscribe", async () => {
    const { client } = makeClient();
    const socket = await startLive(client);
    const texts: string[] = [];
    const off = client.on("transcript", (e) => texts.push(`${e.role}:${e.text}:${e.final}`));
    socket.receive({ type: "transcript", role: "user", itemId: "u1", text: "hello", delta: "hello", final: true });
    socket.receive({ type: "user_speaking", isSpeaking: true });
    off();
    socket.receive({ type: "transcript", role: "assistant", itemId: "a1", text: "late", final: false });
    expect(texts).toEqual(["user:hello:true"]);
    expect(client.isUserSpeaking).toBe(true);
  });

  it("tracks the assistant speaking and reports a local interrupt with the cut item", async () => {
    const { client, events } = makeClient();
    const socket = await startLive(client);
    socket.receive({ type: "speaking", isSpeaking: true, itemId: "a1" });
    expect(client.isSpeaking).toBe(true);
    const result = await client.interrupt();
    expect(result).toEqual({ itemId: "a1", playedMs: undefined });
    expect(client.isSpeaking).toBe(false);
    expect(socket.json.at(-1)).toEqual({ type: "interrupt" });
    expect(events.filter((e) => e.type === "interrupted")).toEqual([
      { type: "interrupted", local: true, itemId: "a1", playedMs: undefined },
    ]);
    // Audio of the cut reply still on the wire is dropped, not played.
    socket.receiveBinary(new ArrayBuffer(480));
    expect(client.debug.audioDropped).toBe(480);
    // The next reply is played again.
    socket.receive({ type: "speaking", isSpeaking: true, itemId: "a2" });
    socket.receiveBinary(new ArrayBuffer(480));
    expect(client.debug.audioDropped).toBe(480);
  });

  it("steers turns: hold, allowNext, bargeIn, and follows the floor from turn events", async () => {
    const { client, events } = makeClient();
    const socket = await startLive(client);
    client.hold();
    expect(socket.json.at(-1)).toEqual({ type: "hold" });
    socket.receive({ type: "turn", event: "held" });
    expect(client.isHeld).toBe(true);
    client.allowNext(true);
    expect(socket.json.at(-1)).toEqual({ type: "allow_next", respond: true });
    socket.receive({ type: "turn", event: "released", reason: "respond" });
    expect(client.isHeld).toBe(false);
    socket.receive({ type: "speaking", isSpeaking: true, itemId: "a1" });
    socket.receive({ type: "turn", event: "assistant_turn_started", itemId: "a1" });
    expect(client.floor).toBe("assistant");
    socket.receive({ type: "turn", event: "user_turn_started" });
    socket.receive({ type: "turn", event: "assistant_paused", reason: "user_speech", itemId: "a1" });
    expect(client.floor).toBe("paused");
    socket.receive({ type: "turn", event: "assistant_resumed", reason: "backchannel", itemId: "a1" });
    expect(client.floor).toBe("assistant");
    const result = await client.bargeIn();
    expect(result.itemId).toBe("a1");
    expect(socket.json.at(-1)).toEqual({ type: "barge_in" });
    const turns = events.filter((e) => e.type === "turn");
    expect(turns.map((e) => (e.type === "turn" ? [e.event, e.floor, e.held] : null))).toEqual([
      ["held", "idle", true],
      ["released", "idle", false],
      ["assistant_turn_started", "assistant", false],
      ["user_turn_started", "assistant", false],
      ["assistant_paused", "paused", false],
      ["assistant_resumed", "assistant", false],
    ]);
    expect(turns[1]).toMatchObject({ reason: "respond" });
  });

  it("asks for the hold again after a reconnect", async () => {
    const { client } = makeClient(async () => "vxs_fresh");
    const socket = await startLive(client);
    client.hold();
    socket.receive({ type: "turn", event: "held" });
    socket.drop(1001);
    await vi.advanceTimersByTimeAsync(1000);
    const next = FakeSocket.last;
    next.accept();
    next.receive(sessionReady({ capabilities: { audioIn: true, audioOut: true, tools: false, serverVad: true, turnControl: true } }));
    await settle();
    expect(next.json.at(-1)).toEqual({ type: "hold" });
  });

  it("stop() ends the session for good: stop sent, status disconnected, no reconnect", async () => {
    const { client, events } = makeClient();
    const socket = await startLive(client);
    await client.stop();
    expect(socket.json.at(-1)).toEqual({ type: "stop" });
    expect(client.status).toBe("disconnected");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.instances).toHaveLength(1);
    expect(events.at(-1)).toEqual({ type: "status", status: "disconnected", reason: "client_stop" });
  });

  it("a fatal close reports a typed error event and ends disconnected", async () => {
    const { client, events } = makeClient();
    const socket = await startLive(client);
    socket.receive({ type: "error", code: "timeout", message: "idle too long", fatal: true });
    socket.drop(4408);
    await settle();
    const errors = events.filter((e): e is Extract<VoxgateEvent, { type: "error" }> => e.type === "error");
    expect(errors.map((e) => [e.code, e.fatal, e.local ?? false])).toEqual([
      ["timeout", true, false], // the gateway's message
      ["timeout", true, true], // the client giving up: 'timeout' is retryable, but 4408 is not
    ]);
    expect(errors[1]!.error).toBeInstanceOf(VoxgateError);
    expect(client.status).toBe("disconnected");
  });

  it("a failed start rejects with a VoxgateError and leaves the client startable", async () => {
    const { client } = makeClient();
    const started = client.start({ microphone: false, playback: false });
    await settle();
    FakeSocket.last.drop(1006);
    await expect(started).rejects.toMatchObject({ code: "upstream_unavailable" });
    expect(client.status).toBe("disconnected");
    const again = client.start({ microphone: false, playback: false });
    await settle();
    FakeSocket.last.accept();
    FakeSocket.last.receive(sessionReady());
    await expect(again).resolves.toMatchObject({ type: "session_ready" });
  });

  it("resumes the conversation after a drop and keeps conversationId", async () => {
    const { client } = makeClient(async () => "vxs_fresh");
    const socket = await startLive(client);
    socket.drop(1001);
    expect(client.status).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(1000);
    const next = FakeSocket.last;
    next.accept();
    expect(next.json[0]).toMatchObject({ conversationId: "conv-1" });
    next.receive(sessionReady());
    await settle();
    expect(client.status).toBe("connected");
    expect(client.conversationId).toBe("conv-1");
  });

  it("offers registered tools in start, answers their calls and reports tool activity", async () => {
    const { client, events } = makeClient();
    const seen: unknown[] = [];
    client.registerTool(
      "get_location",
      { description: "Where the user is.", parameters: { type: "object", properties: { precise: { type: "boolean" } } } },
      async (args, call) => {
        seen.push([args, call.callId]);
        return { city: "Lyon" };
      },
    );
    const remove = client.registerTool("fails", {}, () => {
      throw new Error("no signal");
    });
    expect(() => client.registerTool("bad name", {}, () => 1)).toThrow(VoxgateError);
    const socket = await startLive(client);
    expect(socket.json[0]!.tools).toEqual([
      { name: "get_location", description: "Where the user is.",
        parameters: { type: "object", properties: { precise: { type: "boolean" } } } },
      { name: "fails", description: "", parameters: { type: "object", properties: {} } },
    ]);
    socket.receive({ type: "tool_status", callId: "c1", name: "get_location", status: "running", ms: 0 });
    socket.receive({ type: "tool_call", callId: "c1", name: "get_location", arguments: { precise: true } });
    socket.receive({ type: "tool_call", callId: "c2", name: "fails", arguments: {} });
    socket.receive({ type: "tool_call", callId: "c3", name: "unknown", arguments: {} });
    await settle();
    expect(seen).toEqual([[{ precise: true }, "c1"]]);
    // Each answer goes out when its handler finishes (an async one later): order by call.
    const results = socket.json
      .filter((m) => m.type === "tool_result")
      .sort((a, b) => String(a.callId).localeCompare(String(b.callId)));
    expect(results).toEqual([
      { type: "tool_result", callId: "c1", output: { city: "Lyon" } },
      { type: "tool_result", callId: "c2", error: "no signal" },
      { type: "tool_result", callId: "c3", error: "this page has no tool named 'unknown'" },
    ]);
    const activity = events.filter((e) => e.type === "tool_status" || e.type === "tool_call").map((e) => e.type);
    expect(activity).toEqual(["tool_status", "tool_call", "tool_call", "tool_call"]);
    remove();
    await client.stop();
  });
});
