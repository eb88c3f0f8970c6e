// Scheduled playback of reply audio on the connection's output timeline.
//
// Every chunk carries its position p (samples at the output rate). It is started with
// AudioBufferSourceNode.start(base + p / rate), so contiguous chunks join without a gap and the
// timeline maps onto the AudioContext clock one-to-one. `base` is fixed by the first media of the
// connection (a small jitter buffer ahead of now) and only ever moves forward, when a chunk arrives
// too late to be played at its place.

const JITTER_S = 0.1; // how far ahead of "now" the first media of a connection is placed
const LATE_MARGIN_S = 0.005; // a chunk starting sooner than this is late

export class AudioPlayer {
  constructor(ctx, stats) {
    this.ctx = ctx;
    this.stats = stats;
    this.rate = 22050;
    this.base = null;
    this.sources = new Set(); // {src, turnId, start, end, when, cancelled}
    this.cuts = new Map(); // turnId -> position at/after which media of that turn is dropped
    this.out = ctx.createGain();
    this.out.connect(ctx.destination);
  }

  /** A new connection (or `ready`): a new timeline at `rate` samples per second. */
  reset(rate = this.rate) {
    this.stopAll();
    this.rate = rate;
    this.base = null;
    this.cuts.clear();
  }

  get outputLatency() {
    const l = this.ctx.outputLatency;
    return Number.isFinite(l) && l > 0 ? l : 0;
  }

  /** Fix the timeline onto the AudioContext clock, on the first media received. */
  anchor(position) {
    if (this.base === null) this.base = this.ctx.currentTime + JITTER_S - position / this.rate;
  }

  /** The output-timeline position being heard now (float samples), or null before any media. */
  clock() {
    if (this.base === null) return null;
    return Math.max(0, (this.ctx.currentTime - this.base - this.outputLatency) * this.rate);
  }

  /** The position reported to the server in `playback` messages (an integer, never negative). */
  playbackPosition() {
    const c = this.clock();
    return c === null ? 0 : Math.floor(c);
  }

  isCut(turnId, position) {
    const cut = this.cuts.get(turnId);
    return cut !== undefined && position >= cut;
  }

  /** True while some reply audio is sounding. */
  get playing() {
    const now = this.ctx.currentTime - this.outputLatency;
    for (const s of this.sources) {
      if (!s.cancelled && s.when <= now && now < s.when + (s.end - s.start) / this.rate) return true;
    }
    return false;
  }

  /** Schedule a chunk of PCM (Float32 samples) at its timeline position. */
  play(turnId, position, samples) {
    if (samples.length === 0 || this.isCut(turnId, position)) return;
    this.anchor(position);
    let when = this.base + position / this.rate;
    const now = this.ctx.currentTime;
    if (when < now + LATE_MARGIN_S && this.ctx.state === 'running') {
      const shift = now + JITTER_S - when;
      this.base += shift;
      when += shift;
      this.stats.rebases += 1;
      console.warn(`avatar: audio chunk at position ${position} (turn ${turnId}) arrived ` +
        `${Math.round((shift - JITTER_S) * 1000)} ms late; timeline re-based ${Math.round(shift * 1000)} ms forward`);
    }
    const buffer = this.ctx.createBuffer(1, samples.length, this.rate);
    buffer.copyToChannel(samples, 0);
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.out);
    const entry = { src, turnId, start: position, end: position + samples.length, when, cancelled: false };
    src.onended = () => {
      this.sources.delete(entry);
      src.disconnect();
      if (!entry.cancelled) this.stats.audioChunksPlayed += 1;
    };
    this.sources.add(entry);
    src.start(when);
    this.stats.audioChunksScheduled += 1;
    this.stats.audioSecondsScheduled += samples.length / this.rate;
  }

  /** Stop the turn's audio now and drop whatever of it comes at or after `position`. */
  interrupt(turnId, position) {
    const prev = this.cuts.get(turnId);
    this.cuts.set(turnId, prev === undefined ? position : Math.min(prev, position));
    for (const s of this.sources) {
      if (s.turnId === turnId) this._cancel(s);
    }
  }

  /** Stop every turn's audio now (the Interrupt button); returns the turn ids that were cut. */
  interruptAll() {
    const pos = this.playbackPosition();
    const turns = new Set([...this.sources].map((s) => s.turnId));
    for (const t of turns) this.interrupt(t, pos);
    return turns;
  }

  stopAll() {
    for (const s of this.sources) this._cancel(s);
    this.sources.clear();
  }

  _cancel(s) {
    s.cancelled = true;
    try { s.src.stop(); } catch { /* not started yet in some browsers */ }
    this.sources.delete(s);
  }
}
