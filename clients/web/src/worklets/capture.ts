// Microphone capture AudioWorklet: mix to mono, resample to the session input rate, and emit
// fixed 20 ms PCM16 frames to the main thread (which sends them as binary WebSocket frames).
//
// Why in a worklet: it runs on the audio thread, so frames keep their 20 ms rhythm even while
// the page's main thread is busy rendering transcripts.

import { StreamResampler } from "./resampler";

class VoxgateCaptureProcessor extends AudioWorkletProcessor {
  private frameMs: number;
  private targetRate = 0;
  private resampler!: StreamResampler;
  private frameSamples = 0;
  private frame!: Int16Array;
  private fill = 0;
  private sumSquares = 0;
  private frames = 0;

  constructor(options?: AudioWorkletNodeOptions) {
    super();
    const opts = (options?.processorOptions ?? {}) as { frameMs?: number; targetRate?: number };
    this.frameMs = opts.frameMs || 20;
    this.setRate(opts.targetRate || 24000);
    this.port.onmessage = (event: MessageEvent<{ type?: string; targetRate?: number }>) => {
      const msg = event.data || {};
      if (msg.type === "rate" && msg.targetRate && msg.targetRate !== this.targetRate) {
        this.setRate(msg.targetRate);
      }
    };
  }

  setRate(targetRate: number): void {
    this.targetRate = targetRate;
    // `sampleRate` is the AudioContext rate, a global of the worklet scope.
    this.resampler = new StreamResampler(sampleRate, targetRate);
    this.frameSamples = Math.round((targetRate * this.frameMs) / 1000);
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.sumSquares = 0;
    this.frames = 0;
  }

  process(inputs: Float32Array[][]): boolean {
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    const n = input[0].length;
    let mono: Float32Array;
    if (input.length === 1) {
      mono = input[0];
    } else {
      mono = new Float32Array(n);
      for (const channel of input) for (let i = 0; i < n; i++) mono[i] += channel[i];
      const scale = 1 / input.length;
      for (let i = 0; i < n; i++) mono[i] *= scale;
    }
    const out = this.resampler.process(mono);
    for (let i = 0; i < out.length; i++) {
      let s = out[i];
      if (s > 1) s = 1;
      else if (s < -1) s = -1;
      this.sumSquares += s * s;
      this.frame[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.fill === this.frameSamples) this.flushFrame();
    }
    return true;
  }

  flushFrame(): void {
    const pcm = this.frame.buffer as ArrayBuffer;
    const rms = Math.sqrt(this.sumSquares / this.frameSamples);
    this.frames += 1;
    // Transfer the buffer (no copy) and start a fresh one.
    this.port.postMessage({ type: "frame", pcm, rms, seq: this.frames }, [pcm]);
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.sumSquares = 0;
  }
}

registerProcessor("voxgate-capture", VoxgateCaptureProcessor);
