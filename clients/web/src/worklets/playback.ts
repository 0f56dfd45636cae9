// Assistant playback AudioWorklet: a growable ring buffer of float samples at the context rate.
//
// - prebuffers (default 80 ms) before starting, so network jitter does not become clicks;
// - fades in over a few milliseconds at every (re)start, and fades out over 5 ms on a flush;
// - flushes at once on interrupt and reports when its output really went silent;
// - pauses (a 5 ms fade, the buffer kept) while the gateway judges speech over the assistant,
//   and resumes where it stopped when that was a cough or an "mm-hmm";
// - counts samples played per assistant item (what `interrupt.playedMs` is made of) and
//   underruns (the buffer ran dry while more audio was still expected).
//
// Audio arrives as PCM16 at the session output rate and is resampled here, on the audio
// thread, to the AudioContext rate.

import { StreamResampler } from "./resampler";

const STATS_INTERVAL_S = 0.05;
const FADE_OUT_MS = 5;
const MAX_TRACKED_ITEMS = 32;

interface Segment {
  itemId: string;
  remaining: number;
}

type PlaybackCommand =
  | { type: "audio"; itemId: string; pcm: ArrayBuffer }
  | { type: "end" }
  | { type: "flush"; id?: number }
  | { type: "pause" }
  | { type: "resume" }
  | { type: "rename"; from: string; to: string }
  | { type: "config"; prebufferMs?: number; fadeInMs?: number; volume?: number; muted?: boolean; sourceRate?: number }
  | { type: "reset-stats" };

class VoxgatePlaybackProcessor extends AudioWorkletProcessor {
  private prebufferMs: number;
  private fadeInMs: number;
  private volume: number;
  private muted: boolean;
  private gain: number;
  private sourceRate = 0;
  private resampler!: StreamResampler;
  private ring: Float32Array;
  private readPos: number;
  private writePos: number;
  private segments: Segment[];
  private segHead: number;
  private state: "idle" | "prebuffering" | "playing" | "fading";
  /** Held: nothing is taken from the buffer (after a short fade) until "resume". */
  private paused = false;
  private pauseFadePos = 0;
  private ended: boolean;
  private starved: boolean;
  private fadeInPos: number;
  private fadeOutPos: number;
  private flushId: number | null;
  private samplesPlayed: number;
  private underruns: number;
  private playedByItem: Map<string, number>;
  private itemOrder: string[];
  private currentItem: string | null;
  private sinceStats: number;
  private sumSquares: number;
  private dirty: boolean;

  constructor(options?: AudioWorkletNodeOptions) {
    super();
    const opts = (options?.processorOptions ?? {}) as {
      prebufferMs?: number;
      fadeInMs?: number;
      volume?: number;
      muted?: boolean;
      sourceRate?: number;
    };
    this.prebufferMs = opts.prebufferMs ?? 80;
    this.fadeInMs = opts.fadeInMs ?? 10;
    this.volume = opts.volume ?? 1;
    this.muted = !!opts.muted;
    this.gain = this.muted ? 0 : this.volume; // smoothed output gain
    this.setSourceRate(opts.sourceRate || 24000);

    this.ring = new Float32Array(Math.round(sampleRate * 20));
    this.readPos = 0; // absolute sample counters; index = pos % ring.length
    this.writePos = 0;
    /** FIFO of {itemId, remaining} in write order: who owns the buffered samples. */
    this.segments = [];
    this.segHead = 0;

    this.state = "idle"; // idle | prebuffering | playing | fading
    this.ended = false; // no more audio is expected for the current response
    this.starved = false; // ran dry before the end of the stream was announced
    this.fadeInPos = 0;
    this.fadeOutPos = 0;
    this.flushId = null;

    this.samplesPlayed = 0;
    this.underruns = 0;
    this.playedByItem = new Map();
    this.itemOrder = [];
    this.currentItem = null;
    this.sinceStats = 0;
    this.sumSquares = 0; // output energy since the last stats message (level meter)
    this.dirty = true;

    this.port.onmessage = (event: MessageEvent<PlaybackCommand>) => this.onMessage(event.data);
  }

  setSourceRate(rate: number): void {
    this.sourceRate = rate;
    this.resampler = new StreamResampler(rate, sampleRate);
  }

  get buffered(): number {
    return this.writePos - this.readPos;
  }

  onMessage(msg: PlaybackCommand): void {
    if (!msg) return;
    switch (msg.type) {
      case "audio":
        this.enqueue(msg.itemId, new Int16Array(msg.pcm));
        break;
      case "end":
        this.markEnd();
        break;
      case "flush":
        this.flush(msg.id ?? null);
        break;
      case "pause":
        if (!this.paused) {
          this.paused = true;
          this.pauseFadePos = 0;
          this.dirty = true;
        }
        break;
      case "resume":
        if (this.paused) {
          this.paused = false;
          this.fadeInPos = 0; // fade back in where it stopped
          this.dirty = true;
        }
        break;
      case "rename":
        this.rename(msg.from, msg.to);
        break;
      case "config":
        if (msg.prebufferMs !== undefined) this.prebufferMs = msg.prebufferMs;
        if (msg.fadeInMs !== undefined) this.fadeInMs = msg.fadeInMs;
        if (msg.volume !== undefined) this.volume = msg.volume;
        if (msg.muted !== undefined) this.muted = !!msg.muted;
        if (msg.sourceRate && msg.sourceRate !== this.sourceRate) this.setSourceRate(msg.sourceRate);
        break;
      case "reset-stats":
        this.samplesPlayed = 0;
        this.underruns = 0;
        this.playedByItem.clear();
        this.itemOrder = [];
        this.dirty = true;
        break;
      default:
        break;
    }
  }

  enqueue(itemId: string, pcm16: Int16Array): void {
    const input = new Float32Array(pcm16.length);
    for (let i = 0; i < pcm16.length; i++) input[i] = pcm16[i] / 0x8000;
    this.ended = false;
    if (this.starved) {
      // The buffer ran dry and the same stream went on: that was a real gap (an underrun).
      this.starved = false;
      this.underruns += 1;
      this.port.postMessage({ type: "underrun", underruns: this.underruns });
    }
    this.write(itemId, this.resampler.process(input));
    if (this.state === "idle") this.state = "prebuffering";
  }

  markEnd(): void {
    // Push the resampler's held-back tail out, owned by the last item written.
    const last = this.segments.length > this.segHead ? this.segments[this.segments.length - 1] : null;
    if (last) this.write(last.itemId, this.resampler.drain());
    this.resampler.reset();
    this.ended = true;
    if (this.starved && this.buffered === 0) {
      // Ran dry exactly at the end of the stream: a normal ending, not an underrun.
      this.starved = false;
      this.state = "idle";
      this.ended = false;
      this.postStats();
      this.port.postMessage({ type: "drained", frame: currentFrame });
    }
    this.starved = false;
  }

  write(itemId: string, samples: Float32Array): void {
    const n = samples.length;
    if (n === 0) return;
    if (this.buffered + n > this.ring.length) this.grow(this.buffered + n);
    const cap = this.ring.length;
    let idx = this.writePos % cap;
    const first = Math.min(n, cap - idx);
    this.ring.set(first === n ? samples : samples.subarray(0, first), idx);
    if (first < n) this.ring.set(samples.subarray(first), 0);
    this.writePos += n;
    const last = this.segments.length > this.segHead ? this.segments[this.segments.length - 1] : null;
    if (last && last.itemId === itemId) last.remaining += n;
    else this.segments.push({ itemId, remaining: n });
    this.dirty = true;
  }

  grow(needed: number): void {
    let size = this.ring.length;
    while (size < needed) size *= 2;
    const bigger = new Float32Array(size);
    const cap = this.ring.length;
    const count = this.buffered;
    for (let i = 0; i < count; i++) bigger[i] = this.ring[(this.readPos + i) % cap];
    this.ring = bigger;
    this.writePos = count;
    this.readPos = 0;
  }

  rename(from: string, to: string): void {
    for (let i = this.segHead; i < this.segments.length; i++) {
      if (this.segments[i].itemId === from) this.segments[i].itemId = to;
    }
    if (this.playedByItem.has(from)) {
      this.playedByItem.set(to, (this.playedByItem.get(to) || 0) + (this.playedByItem.get(from) || 0));
      this.playedByItem.delete(from);
      this.itemOrder = this.itemOrder.map((id) => (id === from ? to : id));
    }
    if (this.currentItem === from) this.currentItem = to;
    this.dirty = true;
  }

  flush(id: number | null): void {
    // Answer at once with what was heard, so the interrupt message need not wait for the fade.
    const itemId = this.currentItem;
    this.port.postMessage({
      type: "flush-ack",
      id,
      itemId,
      playedSamples: itemId ? this.playedByItem.get(itemId) || 0 : 0,
      wasPlaying: this.state === "playing" || this.state === "fading",
    });
    const silentAlready = this.paused && this.pauseFadePos > 0;
    this.paused = false;
    if (this.state === "playing" && !silentAlready) {
      this.state = "fading";
      this.fadeOutPos = 0;
      this.flushId = id;
    } else {
      this.discard();
      this.state = "idle";
      this.port.postMessage({
        type: "flushed",
        id,
        frame: currentFrame,
        time: currentTime,
        wasPlaying: false,
        samplesPlayed: this.samplesPlayed,
      });
      this.postStats();
    }
  }

  discard(): void {
    this.readPos = this.writePos = 0;
    this.segments = [];
    this.segHead = 0;
    this.resampler.reset();
    this.ended = false;
    this.starved = false;
    this.dirty = true;
  }

  consumeSegments(count: number): void {
    while (count > 0 && this.segHead < this.segments.length) {
      const seg = this.segments[this.segHead];
      const take = Math.min(count, seg.remaining);
      seg.remaining -= take;
      count -= take;
      if (seg.itemId !== this.currentItem) {
        this.currentItem = seg.itemId;
        if (!this.playedByItem.has(seg.itemId)) {
          this.itemOrder.push(seg.itemId);
          if (this.itemOrder.length > MAX_TRACKED_ITEMS) this.playedByItem.delete(this.itemOrder.shift() as string);
        }
      }
      this.playedByItem.set(seg.itemId, (this.playedByItem.get(seg.itemId) || 0) + take);
      if (seg.remaining === 0) this.segHead += 1;
    }
    if (this.segHead > 64 && this.segHead * 2 > this.segments.length) {
      this.segments = this.segments.slice(this.segHead);
      this.segHead = 0;
    }
  }

  process(_inputs: Float32Array[][], outputs: Float32Array[][]): boolean {
    const out = outputs[0][0];
    const n = out.length;
    out.fill(0);

    if (this.state === "prebuffering") {
      const need = Math.round((this.prebufferMs * sampleRate) / 1000);
      if (this.buffered > 0 && (this.buffered >= need || this.ended)) {
        this.state = "playing";
        this.fadeInPos = 0;
        this.port.postMessage({ type: "started", frame: currentFrame, time: currentTime });
        this.dirty = true;
      }
    }

    let taken = 0;
    let silentAt = -1;
    if (this.state === "playing" || this.state === "fading") {
      const cap = this.ring.length;
      const fadeIn = Math.max(1, Math.round((this.fadeInMs * sampleRate) / 1000));
      const fadeOut = Math.max(1, Math.round((FADE_OUT_MS * sampleRate) / 1000));
      const target = this.muted ? 0 : this.volume;
      const gainStep = (target - this.gain) / n;
      for (let i = 0; i < n; i++) {
        if (this.readPos === this.writePos) break;
        let g = this.gain + gainStep * i;
        if (this.paused && this.state === "playing") {
          if (this.pauseFadePos >= fadeOut) break; // held: the rest stays in the buffer
          g *= 1 - this.pauseFadePos++ / fadeOut;
        }
        if (this.fadeInPos < fadeIn) g *= this.fadeInPos++ / fadeIn;
        if (this.state === "fading") {
          if (this.fadeOutPos >= fadeOut) {
            silentAt = i;
            break;
          }
          g *= 1 - this.fadeOutPos++ / fadeOut;
        }
        const v = this.ring[this.readPos % cap] * g;
        out[i] = v;
        this.sumSquares += v * v;
        this.readPos += 1;
        taken += 1;
      }
      this.gain = target;
      if (taken > 0) {
        this.samplesPlayed += taken;
        this.consumeSegments(taken);
        this.dirty = true;
      }
      if (this.state === "fading" && (silentAt >= 0 || this.readPos === this.writePos)) {
        const at = silentAt >= 0 ? silentAt : taken;
        this.discard();
        this.state = "idle";
        this.port.postMessage({
          type: "flushed",
          id: this.flushId,
          frame: currentFrame + at,
          time: currentTime + at / sampleRate,
          wasPlaying: true,
          samplesPlayed: this.samplesPlayed,
        });
        this.postStats(); // final counters now, not up to 50 ms later
      } else if (this.state === "playing" && this.readPos === this.writePos) {
        if (this.ended) {
          this.state = "idle";
          this.ended = false;
          // Final counters first: whoever sees "drained" must not read 50 ms old ones.
          this.postStats();
          this.port.postMessage({ type: "drained", frame: currentFrame + taken });
        } else {
          // Counted as an underrun only if more audio of this stream follows (see enqueue).
          this.starved = true;
          this.state = "prebuffering";
        }
        this.dirty = true;
      }
    }

    this.sinceStats += n;
    if (this.dirty && this.sinceStats >= STATS_INTERVAL_S * sampleRate) {
      this.postStats();
    }
    return true;
  }

  postStats(): void {
    const rms = Math.sqrt(this.sumSquares / Math.max(1, this.sinceStats));
    this.sinceStats = 0;
    this.sumSquares = 0;
    this.dirty = false;
    const items: Record<string, number> = {};
    for (const [id, samples] of this.playedByItem) items[id] = samples;
    this.port.postMessage({
      type: "stats",
      samplesPlayed: this.samplesPlayed,
      underruns: this.underruns,
      playing: this.state === "playing" || this.state === "fading",
      state: this.state,
      buffered: this.buffered,
      currentItem: this.currentItem,
      items,
      rms,
      frame: currentFrame,
    });
  }
}

registerProcessor("voxgate-playback", VoxgatePlaybackProcessor);
