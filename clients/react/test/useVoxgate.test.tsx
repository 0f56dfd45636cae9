// @vitest-environment happy-dom
// useVoxgate under React 19 strict mode, against a fake gateway socket (text-only session:
// happy-dom has no Web Audio, which is what the real-Chromium tests cover).
import { StrictMode, act } from "react";
import { createRoot, type Root } from "react-dom/client";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { useVoxgate, type UseVoxgateResult } from "../src/index";
import { FakeSocket, sessionReady } from "../../web/test/fake-socket";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

let renders = 0;
let latest: UseVoxgateResult | null = null;

function Probe({ token }: { token?: () => Promise<string> }) {
  renders += 1;
  // A new options object (and a new token function) on every render, as apps write it.
  latest = useVoxgate({
    url: "ws://gateway.test/ws",
    token: token ?? (async () => "vxs_one"),
    WebSocket: FakeSocket as unknown as typeof WebSocket,
    pingIntervalMs: 0,
    startOptions: { microphone: false, playback: false },
  });
  return <p data-status={latest.status}>{latest.transcript.map((t) => t.text).join("|")}</p>;
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

let root: Root;
let container: HTMLElement;

beforeEach(() => {
  FakeSocket.reset();
  renders = 0;
  latest = null;
  container = document.createElement("div");
  root = createRoot(container);
});
afterEach(() => {
  act(() => root.unmount());
});

async function startSession() {
  let started: Promise<unknown> = Promise.resolve();
  await act(async () => {
    started = latest!.start();
    await tick();
  });
  const socket = FakeSocket.last;
  await act(async () => {
    socket.accept();
    socket.receive(sessionReady());
    await started;
  });
  return socket;
}

describe("useVoxgate", () => {
  it("opens nothing on mount, even under strict mode's double mount", async () => {
    await act(async () => root.render(<StrictMode><Probe /></StrictMode>));
    expect(FakeSocket.instances).toHaveLength(0);
    expect(latest!.status).toBe("disconnected");
  });

  it("starts one session under strict mode; new option objects per render do not restart it", async () => {
    await act(async () => root.render(<StrictMode><Probe /></StrictMode>));
    const socket = await startSession();
    expect(latest!.isConnected).toBe(true);
    await act(async () => root.render(<StrictMode><Probe /></StrictMode>)); // new options object
    await act(async () => root.render(<StrictMode><Probe token={async () => "vxs_two"} /></StrictMode>));
    expect(FakeSocket.instances).toHaveLength(1);
    expect(socket.closeCalls).toEqual([]);
    expect(container.querySelector("p")!.dataset.status).toBe("connected");
  });

  it("keeps the transcript by item and re-renders on changes only, not per frame", async () => {
    await act(async () => root.render(<StrictMode><Probe /></StrictMode>));
    const socket = await startSession();
    await act(async () => {
      socket.receive({ type: "transcript", role: "user", itemId: "u1", text: "hello", final: false });
    });
    expect(latest!.partial).toBe("hello");
    await act(async () => {
      socket.receive({ type: "transcript", role: "user", itemId: "u1", text: "hello there", final: true });
      socket.receive({ type: "transcript", role: "assistant", itemId: "a1", text: "you said", final: false });
    });
    expect(latest!.transcript).toEqual([
      { role: "user", itemId: "u1", text: "hello there", final: true, interrupted: false },
      { role: "assistant", itemId: "a1", text: "you said", final: false, interrupted: false },
    ]);
    expect(latest!.partial).toBe("");
    const before = renders;
    await act(async () => {
      // Diagnostics and repeats: nothing shown changes.
      for (let i = 0; i < 50; i++) socket.receive({ type: "pong", id: i });
      socket.receive({ type: "transcript", role: "assistant", itemId: "a1", text: "you said", final: false });
      socket.receive({ type: "user_speaking", isSpeaking: false });
    });
    expect(renders).toBe(before);
  });

  it("marks the cut turn interrupted and reports errors in state instead of throwing", async () => {
    await act(async () => root.render(<StrictMode><Probe /></StrictMode>));
    const socket = await startSession();
    await act(async () => {
      socket.receive({ type: "speaking", isSpeaking: true, itemId: "a1" });
      socket.receive({ type: "transcript", role: "assistant", itemId: "a1", text: "once upon", final: false });
    });
    expect(latest!.isSpeaking).toBe(true);
    await act(async () => {
      await latest!.interrupt();
    });
    expect(latest!.isSpeaking).toBe(false);
    expect(latest!.transcript[0]!.interrupted).toBe(true);
    expect(socket.json.at(-1)).toEqual({ type: "interrupt" });
    await act(async () => {
      await latest!.sendUserMessage("   ");
    });
    expect(latest!.error?.code).toBe("bad_request");
  });

  it("steers turns: hold, allowNext and the floor from turn events", async () => {
    await act(async () => root.render(<StrictMode><Probe /></StrictMode>));
    const socket = await startSession();
    await act(async () => {
      latest!.hold();
    });
    expect(socket.json.at(-1)).toEqual({ type: "hold" });
    await act(async () => {
      socket.receive({ type: "turn", event: "held" });
      socket.receive({ type: "turn", event: "user_turn_started" });
    });
    expect(latest!.isHeld).toBe(true);
    expect(latest!.floor).toBe("user");
    await act(async () => {
      latest!.allowNext(true);
      socket.receive({ type: "turn", event: "released", reason: "respond" });
      socket.receive({ type: "turn", event: "user_turn_ended", reason: "silence" });
    });
    expect(socket.json.at(-1)).toEqual({ type: "allow_next", respond: true });
    expect(latest!.isHeld).toBe(false);
    expect(latest!.floor).toBe("idle");
  });

  it("unmount stops the session: stop sent, socket closed, no reconnect", async () => {
    await act(async () => root.render(<StrictMode><Probe /></StrictMode>));
    const socket = await startSession();
    await act(async () => root.render(<StrictMode><div /></StrictMode>));
    expect(socket.json.at(-1)).toEqual({ type: "stop" });
    expect(socket.closeCalls[0]).toMatchObject({ code: 1000 });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(FakeSocket.instances).toHaveLength(1);
  });

  it("a failed start leaves the error in state and resolves null", async () => {
    await act(async () => root.render(<StrictMode><Probe /></StrictMode>));
    let result: unknown = "pending";
    await act(async () => {
      const started = latest!.start();
      await tick();
      FakeSocket.last.drop(4403);
      result = await started;
    });
    expect(result).toBeNull();
    expect(latest!.error?.code).toBe("forbidden_origin");
    expect(latest!.status).toBe("disconnected");
  });
});
