// Streaming windowed-sinc resampler shared by the capture and playback AudioWorklets.
//
// Why not linear interpolation: the microphone usually runs at 48 kHz and the session at
// 24 kHz, and a plain decimation folds everything above 12 kHz back into the speech band
// (audible hiss, worse recognition). A 32-tap Blackman-windowed sinc with a precomputed phase
// table costs about a million multiply-adds a second, which an audio thread does not notice.
//
// No dependencies and no browser globals, so the build can bundle it into each worklet (a
// worklet module loaded from a Blob URL cannot import its neighbours).

const PHASES = 256;

export class StreamResampler {
  readonly inRate: number;
  readonly outRate: number;
  readonly passthrough: boolean;
  readonly step: number;
  readonly cutoff: number;
  readonly halfTaps: number;
  readonly taps: number;
  readonly table: Float32Array;
  private buf!: Float32Array;
  private len!: number;
  private pos!: number;

  /**
   * @param inRate  input sample rate (Hz)
   * @param outRate output sample rate (Hz)
   * @param options halfTaps: kernel half-width, in input samples at unit ratio
   */
  constructor(inRate: number, outRate: number, options: { halfTaps?: number } = {}) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.passthrough = inRate === outRate;
    /** Input samples advanced per output sample. */
    this.step = inRate / outRate;
    // Cut off a little below the lower Nyquist so the transition band stays out of it.
    const ratio = Math.min(1, outRate / inRate);
    this.cutoff = 0.92 * ratio;
    // Downsampling widens the kernel (in input samples) to keep the same filter quality.
    this.halfTaps = Math.ceil((options.halfTaps ?? 12) / ratio);
    this.taps = this.halfTaps * 2;
    this.table = buildTable(this.halfTaps, this.cutoff);
    this.reset();
  }

  /** Forget all history: the next sample starts a new, unrelated stream. */
  reset(): void {
    // Start with halfTaps of silence so the first output sample is centred on input 0.
    this.buf = new Float32Array(Math.max(4096, this.taps * 4));
    this.len = this.halfTaps;
    this.pos = this.halfTaps; // fractional input position of the next output sample
  }

  /**
   * Resample one block. Returns a new Float32Array (possibly empty) of output samples.
   */
  process(input: Float32Array): Float32Array {
    if (this.passthrough) return input.slice();
    this._append(input);
    const { halfTaps, table, taps } = this;
    const buf = this.buf;
    const available = this.len - halfTaps - this.pos;
    if (available <= 0) return new Float32Array(0);
    const count = Math.max(0, Math.floor(available / this.step) + 1);
    const out = new Float32Array(count);
    let produced = 0;
    let pos = this.pos;
    while (produced < count && pos + halfTaps < this.len) {
      const n = Math.floor(pos);
      const frac = pos - n;
      const phase = Math.min(PHASES - 1, Math.round(frac * PHASES));
      const row = phase * taps;
      // taps cover input offsets n-halfTaps+1 .. n+halfTaps
      let acc = 0;
      let idx = n - halfTaps + 1;
      for (let k = 0; k < taps; k++, idx++) acc += buf[idx] * table[row + k];
      out[produced++] = acc;
      pos += this.step;
    }
    this.pos = pos;
    this._compact();
    return produced === count ? out : out.subarray(0, produced);
  }

  /** Push out the samples still held back by the filter delay (end of a stream). */
  drain(): Float32Array {
    if (this.passthrough) return new Float32Array(0);
    return this.process(new Float32Array(this.halfTaps + 1));
  }

  private _append(input: Float32Array): void {
    const need = this.len + input.length;
    if (need > this.buf.length) {
      let size = this.buf.length;
      while (size < need) size *= 2;
      const bigger = new Float32Array(size);
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len = need;
  }

  private _compact(): void {
    // Keep only what the next output still needs (halfTaps before the read position).
    const keepFrom = Math.floor(this.pos) - this.halfTaps + 1;
    if (keepFrom <= 0) return;
    this.buf.copyWithin(0, keepFrom, this.len);
    this.len -= keepFrom;
    this.pos -= keepFrom;
  }
}

function buildTable(halfTaps: number, cutoff: number): Float32Array {
  const taps = halfTaps * 2;
  const table = new Float32Array(PHASES * taps);
  for (let p = 0; p < PHASES; p++) {
    const frac = p / PHASES;
    let sum = 0;
    for (let k = 0; k < taps; k++) {
      // distance from the output position to input sample (n - halfTaps + 1 + k)
      const x = k - halfTaps + 1 - frac;
      const w = blackman(x / halfTaps);
      const v = cutoff * sinc(cutoff * x) * w;
      table[p * taps + k] = v;
      sum += v;
    }
    // Normalise each phase to unity DC gain so silence stays silence and levels stay put.
    for (let k = 0; k < taps; k++) table[p * taps + k] /= sum;
  }
  return table;
}

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

function blackman(t: number): number {
  // t in [-1, 1]; zero outside.
  if (t <= -1 || t >= 1) return 0;
  const u = (t + 1) / 2;
  return 0.42 - 0.5 * Math.cos(2 * Math.PI * u) + 0.08 * Math.cos(4 * Math.PI * u);
}
