// AudioWorklet processor: microphone audio at the context rate -> 16 kHz PCM16 mono frames.
//
// Resampling uses a windowed-sinc low-pass (cut-off at 0.45 x the output rate) evaluated at the
// fractional input position of every output sample, from a table of 128 kernel phases. It works for
// any input rate (48 kHz, 44.1 kHz, ...). Each frame is posted to the main thread as
// {pcm: ArrayBuffer (Int16 little-endian), level: RMS 0..1}.

const PHASES = 128;

class MicProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.inRate = sampleRate; // global of the AudioWorkletGlobalScope
    this.outRate = opts.outRate || 16000;
    this.frameSamples = Math.max(1, Math.round(this.outRate * (opts.frameMs || 20) / 1000));
    this.step = this.inRate / this.outRate; // input samples per output sample

    // Kernel: taps n - t for n = floor(t) - half + 1 ... floor(t) + half.
    const widen = Math.max(1, this.step);
    this.half = Math.ceil(8 * widen);
    const fc = (0.45 * Math.min(this.outRate, this.inRate)) / this.inRate; // cycles per input sample
    const taps = 2 * this.half;
    this.kernels = [];
    for (let p = 0; p < PHASES; p++) {
      const frac = p / PHASES;
      const k = new Float32Array(taps);
      let sum = 0;
      for (let j = 0; j < taps; j++) {
        const x = j - this.half + 1 - frac; // distance from the output instant, in input samples
        const arg = 2 * fc * x;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * arg) / (Math.PI * arg);
        const w = Math.abs(x) >= this.half ? 0 : 0.5 * (1 + Math.cos((Math.PI * x) / this.half));
        k[j] = sinc * w;
        sum += k[j];
      }
      for (let j = 0; j < taps; j++) k[j] /= sum; // unity gain at DC
      this.kernels.push(k);
    }

    this.buf = new Float32Array(8192);
    this.len = this.half; // the first `half` samples are silence before the stream
    this.t = this.half; // input index (in buf) of the next output sample
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.energy = 0;
    this.port.onmessage = () => {};
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    const n = input[0].length;
    if (this.len + n > this.buf.length) {
      const bigger = new Float32Array((this.len + n) * 2);
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    // Mix down to mono.
    const dst = this.buf;
    if (input.length === 1) {
      dst.set(input[0], this.len);
    } else {
      const scale = 1 / input.length;
      for (let i = 0; i < n; i++) {
        let s = 0;
        for (let c = 0; c < input.length; c++) s += input[c][i];
        dst[this.len + i] = s * scale;
      }
    }
    this.len += n;

    const half = this.half;
    // The kernel reaches floor(t) + half, or one further when the phase rounds up to the next sample.
    while (Math.floor(this.t) + half + 1 < this.len) {
      let i0 = Math.floor(this.t);
      let phase = Math.round((this.t - i0) * PHASES);
      if (phase === PHASES) {
        i0 += 1;
        phase = 0;
      }
      const k = this.kernels[phase];
      const start = i0 - half + 1;
      let acc = 0;
      for (let j = 0; j < k.length; j++) acc += dst[start + j] * k[j];
      this._emit(acc);
      this.t += this.step;
    }
    // Keep only what the next outputs need.
    const drop = Math.floor(this.t) - half + 1;
    if (drop > 0) {
      dst.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.t -= drop;
    }
    return true;
  }

  _emit(v) {
    const s = v < -1 ? -1 : v > 1 ? 1 : v;
    this.frame[this.fill++] = Math.round(s * 32767);
    this.energy += s * s;
    if (this.fill === this.frameSamples) {
      const pcm = this.frame.buffer;
      const level = Math.sqrt(this.energy / this.frameSamples);
      this.port.postMessage({ pcm, level }, [pcm]);
      this.frame = new Int16Array(this.frameSamples);
      this.fill = 0;
      this.energy = 0;
    }
  }
}

registerProcessor('avatar-mic', MicProcessor);
