// A scriptable stand-in for the browser WebSocket: the test plays the gateway.

type Handler<E> = ((event: E) => void) | null;

export class FakeSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  static instances: FakeSocket[] = [];

  readonly url: string;
  readonly protocols: string[];
  readyState = FakeSocket.CONNECTING;
  binaryType = "blob";
  bufferedAmount = 0;
  sent: Array<string | ArrayBuffer> = [];
  closeCalls: Array<{ code?: number; reason?: string }> = [];
  onopen: Handler<Event> = null;
  onmessage: Handler<MessageEvent> = null;
  onclose: Handler<CloseEvent> = null;
  onerror: Handler<Event> = null;

  constructor(url: string, protocols?: string | string[]) {
    this.url = url;
    this.protocols = protocols === undefined ? [] : Array.isArray(protocols) ? protocols : [protocols];
    FakeSocket.instances.push(this);
  }

  static reset(): void {
    FakeSocket.instances = [];
  }

  static get last(): FakeSocket {
    const socket = FakeSocket.instances[FakeSocket.instances.length - 1];
    if (!socket) throw new Error("no socket was opened");
    return socket;
  }

  send(data: string | ArrayBuffer): void {
    if (this.readyState !== FakeSocket.OPEN) throw new Error("InvalidStateError: socket not open");
    this.sent.push(data);
  }

  /** Client-initiated close: like a browser, the close event comes later (here: a microtask). */
  close(code?: number, reason?: string): void {
    this.closeCalls.push({ code, reason });
    if (this.readyState === FakeSocket.CLOSED || this.readyState === FakeSocket.CLOSING) return;
    this.readyState = FakeSocket.CLOSING;
    queueMicrotask(() => this.fireClose(code ?? 1005, reason ?? ""));
  }

  // ---- the gateway's side

  accept(): void {
    this.readyState = FakeSocket.OPEN;
    this.onopen?.(new Event("open"));
  }

  receive(message: object): void {
    this.onmessage?.({ data: JSON.stringify(message) } as MessageEvent);
  }

  receiveBinary(data: ArrayBuffer): void {
    this.onmessage?.({ data } as MessageEvent);
  }

  /** The server (or the network) closes the connection. */
  drop(code: number, reason = ""): void {
    this.fireClose(code, reason);
  }

  /** The JSON messages the client sent, parsed. */
  get json(): Array<Record<string, unknown>> {
    return this.sent.filter((m): m is string => typeof m === "string").map((m) => JSON.parse(m));
  }

  private fireClose(code: number, reason: string): void {
    if (this.readyState === FakeSocket.CLOSED) return;
    this.readyState = FakeSocket.CLOSED;
    this.onclose?.({ code, reason, wasClean: code === 1000 } as CloseEvent);
  }
}

export function sessionReady(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "session_ready",
    sessionId: "s1",
    conversationId: "conv-1",
    engine: "cascade",
    protocol: 1,
    capabilities: { audioIn: true, audioOut: true, tools: false, serverVad: true },
    inputAudio: { format: "pcm16", rate: 24000 },
    outputAudio: { format: "pcm16", rate: 24000 },
    binary: true,
    ...overrides,
  };
}
