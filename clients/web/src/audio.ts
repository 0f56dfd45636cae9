// Audio I/O: the AudioContext, the two AudioWorklets and the microphone, and nothing about
// the protocol. Capture delivers 20 ms PCM16 frames at the session input rate; playback is a
// jitter-buffered ring in a worklet that counts what was really played per assistant item (the
// `playedMs` an interrupt reports) and flushes at once on barge-in.
//
// `AudioIO.state` is the state the client's behaviour reads (is audio playing, how much is
// buffered); the client's `debug` object only exposes it.

import { MIC_SENTENCES } from "./errors";
import type { AudioMode, AudioUnavailableReason, StartOptions, WorkletSource } from "./types";

// Replaced at build time (clients/web/build.mjs): "inline" for the npm package (worklets ship
// as strings inside it and load from Blob URLs, so no bundler needs to know about them), "url"
// for the gateway's /voxgate.js (worklets load from next to the module, CSP-friendly).
declare const __VOXGATE_WORKLETS__: "inline" | "url";
declare const __VOXGATE_CAPTURE_WORKLET__: string;
declare const __VOXGATE_PLAYBACK_WORKLET__: string;

export interface PlaybackState {
  samplesPlayed: number;
  underruns: number;
  /** Milliseconds played per assistant item (recent items). */
  playedMsByItem: Record<string, number>;
  isPlaying: boolean;
  /** Held by the gateway's turn arbiter (`assistant_paused`): the buffer waits to resume. */
  paused: boolean;
  /** Samples waiting in the jitter buffer. */
  buffered: number;
  /** The AudioContext rate (0 before audio starts). */
  sampleRate: number;
  currentItem: string | null;
  /** performance.now() when the worklet reported silence after a flush. */
  lastFlushAt: number | null;
  /** When the speaker fell silent, from the audio clock (performance.now() scale). */
  lastSilentAt: number | null;
  /** interrupt() to silent output, measured on the audio clock. */
  lastStopLatencyMs: number | null;
  startedAt: number | null;
  /** Output RMS, for meters. */
  level: number;
}

export interface CaptureState {
  framesCaptured: number;
  framesSent: number;
  framesDropped: number;
  paused: boolean;
  level: number;
}

export interface FlushAck {
  itemId: string | null;
  playedSamples: number;
  wasPlaying: boolean;
}

export interface AudioHooks {
  /** A 20 ms PCM16 microphone frame at the session input rate. */
  frame(pcm: ArrayBuffer, rms: number, seq: number): void;
  /** Local playback started or stopped. */
  playingChanged(): void;
  flushed(info: { at: number; wasPlaying: boolean }): void;
  unavailable(reason: AudioUnavailableReason, message: string, mode: AudioMode): void;
  audioState(state: AudioContextState, mode?: AudioMode): void;
}

export type AudioSettings = Required<
  Pick<StartOptions, "microphone" | "playback" | "echoCancellation" | "noiseSuppression" | "autoGainControl">
> & { deviceId?: string; inputRate: number; outputRate: number };

interface Graph {
  ctx: AudioContext;
  playback: AudioWorkletNode | null;
  capture: AudioWorkletNode | null;
  stream: MediaStream | null;
  source: MediaStreamAudioSourceNode | null;
  sink: GainNode | null;
}

type PlaybackMessage =
  | { type: "stats"; samplesPlayed: number; underruns: number; buffered: number; currentItem: string | null; playing: boolean; rms: number; items: Record<string, number> }
  | { type: "started" }
  | { type: "drained" }
  | { type: "underrun"; underruns: number }
  | ({ type: "flush-ack"; id: number } & FlushAck)
  | { type: "flushed"; time?: number; wasPlaying: boolean; samplesPlayed?: number };

export class AudioIO {
  readonly state: { playback: PlaybackState; capture: CaptureState };
  private graph: Graph | null = null;
  private _mode: AudioMode = "none";
  private flushSeq = 0;
  private readonly flushWaiters = new Map<number, (ack: FlushAck | null) => void>();
  /** Audio clock at the last interrupt request: the stop latency is measured where sound is made. */
  private interruptContextTime: number | null = null;
  private readonly hooks: AudioHooks;
  private readonly worklets: WorkletSource;
  prebufferMs: number;
  volume = 1;
  muted = false;

  constructor(hooks: AudioHooks, options: { prebufferMs: number; worklets?: WorkletSource }) {
    this.hooks = hooks;
    this.prebufferMs = options.prebufferMs;
    this.worklets = options.worklets ?? (__VOXGATE_WORKLETS__ === "inline" ? "inline" : { baseUrl: moduleBase() });
    this.state = {
      playback: {
        samplesPlayed: 0,
        underruns: 0,
        playedMsByItem: {},
        isPlaying: false,
        paused: false,
        buffered: 0,
        sampleRate: 0,
        currentItem: null,
        lastFlushAt: null,
        lastSilentAt: null,
        lastStopLatencyMs: null,
        startedAt: null,
        level: 0,
      },
      capture: { framesCaptured: 0, framesSent: 0, framesDropped: 0, paused: false, level: 0 },
    };
  }

  get mode(): AudioMode {
    return this._mode;
  }

  /** Playback holds or plays audio (a reply is audible or about to be). */
  get hasPendingPlayback(): boolean {
    return this.state.playback.isPlaying || this.state.playback.buffered > 0;
  }

  get contextTime(): number | null {
    return this.graph ? this.graph.ctx.currentTime : null;
  }

  /**
   * Create the AudioContext synchronously (inside the user's click, so autoplay rules let it
   * run), then load worklets and open the microphone. Falls back to "playback" or "text" with
   * a sentence when something is missing. `alive()` says whether this setup is still wanted.
   */
  async setup(o: AudioSettings, alive: () => boolean): Promise<void> {
    this._mode = "starting";
    try {
      await this.setupInner(o, alive);
    } finally {
      // Whatever path setup took, it ends in a definite mode.
      if (alive() && this._mode === "starting") this._mode = "text";
    }
  }

  private async setupInner(o: AudioSettings, alive: () => boolean): Promise<void> {
    if (!o.playback && !o.microphone) {
      this._mode = "text";
      return;
    }
    if (globalThis.isSecureContext === false) {
      // AudioWorklet and getUserMedia exist only on secure pages (https:// or localhost).
      this.unavailable(
        "insecure_context",
        "Voice needs a secure page (https:// or http://localhost), so this conversation is text-only.",
        "text",
      );
      return;
    }
    const g = globalThis as typeof globalThis & { webkitAudioContext?: typeof AudioContext };
    const AudioCtx = g.AudioContext || g.webkitAudioContext;
    if (!AudioCtx || typeof AudioWorkletNode === "undefined") {
      this.unavailable(
        "no_web_audio",
        "This browser cannot record or play audio here (no Web Audio worklets), so this conversation is text-only.",
        "text",
      );
      return;
    }
    const ctx = new AudioCtx({ latencyHint: "interactive" });
    const graph: Graph = { ctx, playback: null, capture: null, stream: null, source: null, sink: null };
    this.graph = graph;
    this.state.playback.sampleRate = ctx.sampleRate;
    ctx.resume().catch(() => {});
    ctx.onstatechange = () => this.hooks.audioState(ctx.state);
    try {
      const urls = workletUrls(this.worklets);
      await ctx.audioWorklet.addModule(urls.playback);
      if (o.microphone) await ctx.audioWorklet.addModule(urls.capture);
    } catch (err) {
      if (!alive()) return;
      this.unavailable("worklet_failed", `Audio could not start (${messageOf(err)}), so this conversation is text-only.`, "text");
      await this.teardown();
      return;
    }
    if (!alive() || this.graph !== graph) return;

    if (o.playback) {
      const node = new AudioWorkletNode(ctx, "voxgate-playback", {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: {
          prebufferMs: this.prebufferMs,
          sourceRate: o.outputRate,
          volume: this.volume,
          muted: this.muted,
        },
      });
      node.port.onmessage = (event: MessageEvent<PlaybackMessage>) => this.onPlaybackMessage(event.data);
      node.connect(ctx.destination);
      graph.playback = node;
      this._mode = "playback";
    }

    if (o.microphone) {
      const media = globalThis.navigator ? navigator.mediaDevices : undefined;
      if (!media || !media.getUserMedia) {
        this.unavailable(
          "insecure_context",
          "The microphone needs a secure page (https:// or localhost), so this conversation is text-only.",
          this._mode === "starting" ? "text" : this._mode,
        );
        return;
      }
      let stream: MediaStream;
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
        if (!alive()) return;
        const name = err && typeof err === "object" && "name" in err ? String(err.name) : "";
        const sentence =
          MIC_SENTENCES[name] || `The microphone could not start (${messageOf(err)}), so this conversation is text-only.`;
        this.unavailable(
          name === "NotAllowedError" ? "microphone_denied" : "microphone_failed",
          sentence,
          this._mode === "starting" ? "text" : this._mode,
        );
        return;
      }
      if (!alive() || this.graph !== graph) {
        // Stopped while the permission prompt was open: never keep a microphone nobody uses.
        for (const track of stream.getTracks()) track.stop();
        return;
      }
      graph.stream = stream;
      graph.source = ctx.createMediaStreamSource(stream);
      const capture = new AudioWorkletNode(ctx, "voxgate-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { targetRate: o.inputRate, frameMs: 20 },
      });
      capture.port.onmessage = (event: MessageEvent<{ type: string; pcm: ArrayBuffer; rms: number; seq: number }>) => {
        const msg = event.data;
        if (msg.type !== "frame") return;
        const c = this.state.capture;
        c.framesCaptured += 1;
        c.level = msg.rms;
        this.hooks.frame(msg.pcm, msg.rms, msg.seq);
      };
      // A silent sink keeps the capture node pulled by the graph without being heard.
      graph.sink = ctx.createGain();
      graph.sink.gain.value = 0;
      graph.source.connect(capture);
      capture.connect(graph.sink).connect(ctx.destination);
      graph.capture = capture;
      this._mode = "full";
      for (const track of stream.getAudioTracks()) {
        track.onended = () => {
          if (this.graph === graph) {
            this.unavailable(
              "microphone_ended",
              "The microphone was disconnected, so this conversation is now text-only.",
              graph.playback ? "playback" : "text",
            );
          }
        };
      }
    }
    this.hooks.audioState(ctx.state, this._mode);
  }

  private unavailable(reason: AudioUnavailableReason, message: string, mode: AudioMode): void {
    this._mode = mode;
    this.hooks.unavailable(reason, message, mode);
  }

  /** Release everything: microphone tracks stopped, nodes disconnected, context closed. */
  async teardown(): Promise<void> {
    const graph = this.graph;
    this.graph = null;
    this._mode = "none";
    const wasPlaying = this.state.playback.isPlaying;
    this.state.playback.isPlaying = false;
    this.state.playback.buffered = 0;
    for (const [id, waiter] of this.flushWaiters) {
      this.flushWaiters.delete(id);
      waiter(null);
    }
    if (wasPlaying) this.hooks.playingChanged();
    if (!graph) return;
    if (graph.stream) for (const track of graph.stream.getTracks()) track.stop();
    try {
      graph.source?.disconnect();
      graph.capture?.disconnect();
      graph.playback?.disconnect();
    } catch {
      /* already disconnected */
    }
    if (graph.ctx.state !== "closed") await graph.ctx.close().catch(() => {});
  }

  /** Resume a suspended AudioContext (call it from a user gesture). */
  resume(): Promise<void> {
    if (this.graph && this.graph.ctx.state === "suspended") return this.graph.ctx.resume();
    return Promise.resolve();
  }

  /** Tell the capture worklet the session's input rate (the gateway may pick another). */
  setCaptureRate(rate: number): void {
    this.graph?.capture?.port.postMessage({ type: "rate", targetRate: rate });
  }

  /** Queue assistant PCM16 for `itemId`. The buffer is transferred, not copied. */
  enqueue(itemId: string, pcm: ArrayBuffer): void {
    const node = this.graph?.playback;
    if (!node || pcm.byteLength < 2) return;
    const even = pcm.byteLength % 2 ? pcm.slice(0, pcm.byteLength - 1) : pcm;
    node.port.postMessage({ type: "audio", itemId, pcm: even }, [even]);
  }

  /** No more audio for the current reply: play out the tail, then report "drained". */
  endOfStream(): void {
    this.postPlayback({ type: "end" });
  }

  /** Audio that arrived before its item id was known gets its real name. */
  rename(from: string, to: string): void {
    this.postPlayback({ type: "rename", from, to });
    const map = this.state.playback.playedMsByItem;
    if (map[from] !== undefined) {
      map[to] = map[from];
      delete map[from];
    }
  }

  configure(config: { sourceRate?: number; volume?: number; muted?: boolean; prebufferMs?: number }): void {
    if (config.volume !== undefined) this.volume = config.volume;
    if (config.muted !== undefined) this.muted = config.muted;
    if (config.prebufferMs !== undefined) this.prebufferMs = config.prebufferMs;
    this.postPlayback({ type: "config", ...config });
  }

  /** Hold playback where it is (a 5 ms fade; the buffer is kept) until `resumePlayback`. */
  pausePlayback(): void {
    this.state.playback.paused = true;
    this.postPlayback({ type: "pause" });
  }

  /** Go on playing from where `pausePlayback` held it. */
  resumePlayback(): void {
    this.state.playback.paused = false;
    this.postPlayback({ type: "resume" });
  }

  /** Note the audio clock of an interrupt request, so the flush can report the stop latency. */
  markInterrupt(): void {
    this.interruptContextTime = this.contextTime;
  }

  /** Flush playback now; resolves with what had been played of the current item (or null
   * when there is no playback, or the audio thread did not answer within 80 ms). */
  flush(): Promise<FlushAck | null> {
    const node = this.graph?.playback;
    if (!node) return Promise.resolve(null);
    const id = ++this.flushSeq;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.flushWaiters.delete(id);
        resolve(null); // audio thread suspended: fall back to the last stats
      }, 80);
      this.flushWaiters.set(id, (ack) => {
        clearTimeout(timer);
        resolve(ack);
      });
      node.port.postMessage({ type: "flush", id });
    });
  }

  private postPlayback(message: Record<string, unknown>): void {
    this.graph?.playback?.port.postMessage(message);
  }

  private setPlaying(value: boolean): void {
    if (this.state.playback.isPlaying === value) return;
    this.state.playback.isPlaying = value;
    this.hooks.playingChanged();
  }

  private onPlaybackMessage(msg: PlaybackMessage): void {
    const p = this.state.playback;
    const rate = p.sampleRate || 48000;
    switch (msg.type) {
      case "stats": {
        p.samplesPlayed = msg.samplesPlayed;
        p.underruns = msg.underruns;
        p.buffered = msg.buffered;
        p.currentItem = msg.currentItem;
        p.level = msg.playing ? msg.rms : 0;
        const items: Record<string, number> = {};
        for (const [id, samples] of Object.entries(msg.items)) items[id] = Math.round((samples / rate) * 1000);
        p.playedMsByItem = items;
        this.setPlaying(!!msg.playing);
        break;
      }
      case "started":
        p.startedAt = performance.now();
        this.setPlaying(true);
        break;
      case "drained":
        p.buffered = 0;
        p.level = 0;
        this.setPlaying(false);
        break;
      case "underrun":
        p.underruns = msg.underruns;
        break;
      case "flush-ack": {
        const waiter = this.flushWaiters.get(msg.id);
        if (waiter) {
          this.flushWaiters.delete(msg.id);
          waiter({ itemId: msg.itemId, playedSamples: msg.playedSamples, wasPlaying: msg.wasPlaying });
        }
        break;
      }
      case "flushed": {
        const now = performance.now();
        p.paused = false;
        p.buffered = 0;
        p.level = 0;
        if (typeof msg.samplesPlayed === "number") p.samplesPlayed = msg.samplesPlayed;
        p.lastFlushAt = now;
        p.lastSilentAt = this.audioTimeToPerformance(msg.time) ?? now;
        const asked = this.interruptContextTime;
        if (msg.wasPlaying && typeof asked === "number" && typeof msg.time === "number") {
          p.lastStopLatencyMs = Math.max(0, (msg.time - asked) * 1000);
        }
        this.setPlaying(false);
        this.hooks.flushed({ at: now, wasPlaying: msg.wasPlaying });
        break;
      }
      default:
        break;
    }
  }

  private audioTimeToPerformance(contextTime: number | undefined): number | null {
    const ctx = this.graph?.ctx;
    if (!ctx || typeof contextTime !== "number" || typeof ctx.getOutputTimestamp !== "function") return null;
    const ts = ctx.getOutputTimestamp();
    if (!ts || !ts.performanceTime || ts.contextTime === undefined) return null;
    // getOutputTimestamp pairs the frame the speaker plays now with performance.now(): the
    // frame at `contextTime` is heard that much later (or earlier).
    return ts.performanceTime + (contextTime - ts.contextTime) * 1000;
  }
}

let inlineUrls: { capture: string; playback: string } | null = null;

function workletUrls(source: WorkletSource): { capture: string; playback: string } {
  if (source === "inline") {
    if (!__VOXGATE_CAPTURE_WORKLET__ || !__VOXGATE_PLAYBACK_WORKLET__) {
      throw new Error("this build has no inline worklets; pass worklets: {baseUrl}");
    }
    // Made once per page: the Blob URLs stay valid for its lifetime and every AudioContext reuses them.
    inlineUrls ??= {
      capture: blobUrl(__VOXGATE_CAPTURE_WORKLET__),
      playback: blobUrl(__VOXGATE_PLAYBACK_WORKLET__),
    };
    return inlineUrls;
  }
  const base = String(source.baseUrl);
  const withSlash = base.endsWith("/") ? base : `${base}/`;
  const resolveAgainst = globalThis.location ? globalThis.location.href : undefined;
  return {
    capture: new URL("capture-worklet.js", new URL(withSlash, resolveAgainst)).href,
    playback: new URL("playback-worklet.js", new URL(withSlash, resolveAgainst)).href,
  };
}

function blobUrl(code: string): string {
  return URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
}

/** The folder this module was loaded from (the gateway serves the worklets next to it). Not the
 * `new URL("./x.js", import.meta.url)` form on purpose: bundlers rewrite that pattern. */
function moduleBase(): string {
  const here = import.meta.url;
  return here.slice(0, here.lastIndexOf("/") + 1);
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
