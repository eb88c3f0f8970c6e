// The face video: JPEG frames stamped with output-timeline positions, drawn on the audio clock.
//
// Frames are decoded as they arrive and kept in a small queue ordered by position. On every
// animation frame the latest frame whose position is at or before the audio clock (what the
// listener hears now) is drawn, and older ones are dropped, so lips follow the voice for any
// session length without a separate video clock that could drift.

const MAX_QUEUE = 64; // ~2.5 s at 25 fps; the server sends at most ~0.4 s ahead
const MAX_AHEAD_S = 30; // a frame this far ahead of the clock is bogus

export class VideoView {
  constructor(canvas, player, stats) {
    this.canvas = canvas;
    this.g = canvas.getContext('2d');
    this.player = player;
    this.stats = stats;
    this.queue = []; // {turnId, position, bitmap}, ascending position
    this.enabled = false;
    this.generation = 0; // bumped by reset(): decodes started before it are discarded
    this.current = null; // {turnId, position} of the frame on the canvas
  }

  /** Apply `ready.video` ({fps, width, height, format} or null). */
  configure(video) {
    this.reset();
    this.enabled = !!video;
    if (video) {
      if (this.canvas.width !== video.width) this.canvas.width = video.width;
      if (this.canvas.height !== video.height) this.canvas.height = video.height;
    }
  }

  /** Forget queued frames (new connection). What is on the canvas stays until a new frame comes. */
  reset() {
    this.generation += 1;
    for (const f of this.queue) f.bitmap.close();
    this.queue = [];
    this.current = null;
  }

  async push(turnId, position, buffer, offset) {
    if (!this.enabled || this.player.isCut(turnId, position)) return;
    this.stats.framesReceived += 1;
    this.player.anchor(position);
    // How far ahead of the audio clock the frame came (negative: it came too late to be on time).
    const lead = this._leadMs(position);
    this.stats.frameArrivalLeadMs = lead;
    if (lead < 0) this.stats.framesLate += 1;
    const gen = this.generation;
    let bitmap;
    try {
      bitmap = await createImageBitmap(new Blob([new Uint8Array(buffer, offset)], { type: 'image/jpeg' }));
    } catch (err) {
      this.stats.frameDecodeErrors += 1;
      console.warn('avatar: a video frame could not be decoded', err);
      return;
    }
    if (gen !== this.generation || this.player.isCut(turnId, position)) {
      bitmap.close();
      return;
    }
    this.stats.frameDecodedLeadMs = this._leadMs(position);
    const q = this.queue;
    let i = q.length;
    while (i > 0 && q[i - 1].position > position) i--;
    q.splice(i, 0, { turnId, position, bitmap });
    while (q.length > MAX_QUEUE) {
      q.shift().bitmap.close();
      this.stats.framesDropped += 1;
    }
  }

  _leadMs(position) {
    const clock = this.player.clock();
    return clock === null ? 0 : ((position - clock) / this.player.rate) * 1000;
  }

  /** Drop the turn's frames at or after `position`. */
  interrupt(turnId, position) {
    this.queue = this.queue.filter((f) => {
      const drop = f.turnId === turnId && f.position >= position;
      if (drop) {
        f.bitmap.close();
        this.stats.framesDropped += 1;
      }
      return !drop;
    });
  }

  /** Called on every animation frame. */
  tick() {
    const clock = this.player.clock();
    const stats = this.stats;
    if (clock === null) return;
    stats.lastAudioPosition = clock;
    const q = this.queue;
    let pick = -1;
    if (this.player.ctx.state !== 'running') {
      // The audio clock stands still until the page is allowed to play sound: show the newest frame.
      pick = q.length - 1;
    } else {
      const limit = clock + MAX_AHEAD_S * this.player.rate;
      for (let i = 0; i < q.length && q[i].position <= clock; i++) pick = i;
      // Drop bogus far-future frames so they cannot block the queue.
      while (q.length && q[q.length - 1].position > limit) q.pop().bitmap.close();
    }
    if (pick >= 0) {
      const frame = q[pick];
      for (let i = 0; i < pick; i++) q[i].bitmap.close();
      stats.framesDropped += pick;
      q.splice(0, pick + 1);
      this.g.drawImage(frame.bitmap, 0, 0, this.canvas.width, this.canvas.height);
      frame.bitmap.close();
      this.current = { turnId: frame.turnId, position: frame.position };
      stats.framesDrawn += 1;
      stats.lastDrawnPosition = frame.position;
      stats.lastDrawnTurn = frame.turnId;
    }
    if (this.current) stats.avOffsetMs = ((this.current.position - clock) / this.player.rate) * 1000;
  }
}
