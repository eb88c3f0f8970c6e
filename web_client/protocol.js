// Wire format of the avatar WebSocket protocol (docs/protocol.md) and a reconnecting socket.

export const KIND_AUDIO = 1;
export const KIND_VIDEO = 2;
const HEADER_BYTES = 16;

/**
 * Parse a binary frame from the server: b"AV", kind u8, flags u8, turn_id u32, position u64, payload.
 * Returns null when the frame is malformed.
 */
export function parseMediaFrame(buffer) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < HEADER_BYTES) return null;
  const view = new DataView(buffer);
  if (view.getUint8(0) !== 0x41 || view.getUint8(1) !== 0x56) return null; // "AV"
  const kind = view.getUint8(2);
  const turnId = view.getUint32(4, true);
  const position = view.getUint32(8, true) + view.getUint32(12, true) * 4294967296;
  return { kind, turnId, position, buffer, payloadOffset: HEADER_BYTES };
}

/** PCM16LE payload of an audio frame as Float32 samples in [-1, 1). */
export function pcm16ToFloat32(buffer, offset) {
  const count = (buffer.byteLength - offset) >> 1;
  const view = new DataView(buffer, offset, count * 2);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = view.getInt16(i * 2, true) / 32768;
  return out;
}

/** ws(s)://<same host>/ws, with ?token= copied from the page URL. */
export function socketUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  const page = new URLSearchParams(loc.search);
  const url = new URL(`${scheme}//${loc.host}/ws`);
  const token = page.get('token');
  if (token) url.searchParams.set('token', token);
  return url.toString();
}

/**
 * A WebSocket that reconnects with exponential backoff.
 * Callbacks: onOpen(ws), onJson(msg), onBinary(ArrayBuffer), onClose(event, wasOpen), onStatus({state, ...}).
 * state: "connecting" | "connected" | "reconnecting" (with delayMs, attempt) | "closed".
 */
export class ReconnectingSocket {
  constructor(url, handlers, { minDelayMs = 500, maxDelayMs = 15000 } = {}) {
    this.url = url;
    this.h = handlers;
    this.minDelayMs = minDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.attempt = 0;
    this.ws = null;
    this.timer = null;
    this.stopped = false;
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.stopped = false;
    this._status({ state: 'connecting', attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this._status({ state: 'error', message: String(err) });
      this._scheduleReconnect();
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      opened = true;
      this._status({ state: 'connected' });
      this.h.onOpen?.(ws);
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      if (typeof ev.data === 'string') {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          console.warn('avatar: server sent text that is not JSON', ev.data);
          return;
        }
        if (msg && typeof msg === 'object') this.h.onJson?.(msg);
      } else {
        this.h.onBinary?.(ev.data);
      }
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.h.onClose?.(ev, opened);
      if (!this.stopped) this._scheduleReconnect(ev);
    };
    ws.onerror = () => {
      // A close event always follows; the reconnect is scheduled there.
    };
  }

  /** The connection is healthy (the server answered hello): reset the backoff. */
  markHealthy() {
    this.attempt = 0;
  }

  /** Drop the current connection and connect again at once. */
  reconnectNow() {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000, 'reconnect'); } catch { /* already closed */ }
      this.h.onClose?.({ code: 1000, reason: 'reconnect', wasClean: true }, true);
    }
    this.connect();
  }

  send(data) {
    if (!this.isOpen) return false;
    this.ws.send(typeof data === 'string' || data instanceof ArrayBuffer || ArrayBuffer.isView(data)
      ? data : JSON.stringify(data));
    return true;
  }

  get bufferedAmount() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, 'bye');
  }

  _scheduleReconnect(ev) {
    const delay = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this.attempt);
    const jittered = Math.round(delay * (0.8 + 0.4 * Math.random()));
    this.attempt += 1;
    this._status({
      state: 'reconnecting', delayMs: jittered, attempt: this.attempt,
      code: ev?.code, reason: ev?.reason || '',
    });
    this.timer = setTimeout(() => this.connect(), jittered);
  }

  _status(s) {
    this.h.onStatus?.(s);
  }
}
