// Microphone capture: getUserMedia (echo cancellation, noise suppression, AGC on) -> AudioWorklet
// -> 16 kHz PCM16 mono frames. The microphone stays open while the agent speaks: the browser's echo
// canceller and the server's guard keep the agent's own voice out.

export class MicError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind; // "insecure" | "denied" | "no_device" | "busy" | "failed"
  }
}

export function describeMicError(err) {
  if (err instanceof MicError) return err;
  const name = err && err.name;
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
    return new MicError('denied',
      'Microphone access was denied. Allow the microphone for this page in the browser\'s site ' +
      'settings (the icon left of the address), then press "Start microphone" again. You can also type below.');
  }
  if (name === 'NotFoundError' || name === 'DevicesNotFoundError' || name === 'OverconstrainedError') {
    return new MicError('no_device',
      'No microphone was found. Connect one and press "Start microphone", or type your message below.');
  }
  if (name === 'NotReadableError' || name === 'AbortError' || name === 'TrackStartError') {
    return new MicError('busy',
      'The microphone could not be opened (another program may be using it). Close it and try again.');
  }
  return new MicError('failed', `The microphone could not be started: ${err && err.message ? err.message : err}`);
}

export class Microphone {
  /**
   * @param {AudioContext} ctx  the page's single AudioContext
   * @param {{onFrame: (pcm: ArrayBuffer) => void, onLevel?: (rms: number) => void, onEnded?: () => void}} handlers
   */
  constructor(ctx, handlers) {
    this.ctx = ctx;
    this.h = handlers;
    this.stream = null;
    this.source = null;
    this.node = null;
    this.moduleLoaded = null;
  }

  get active() {
    return this.stream !== null;
  }

  async start() {
    if (this.active) return;
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new MicError('insecure',
        'This page cannot use the microphone because it is not served over https (or from localhost). ' +
        'Open it as https://… or http://localhost…, or type your message below.');
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
        video: false,
      });
    } catch (err) {
      throw describeMicError(err);
    }
    try {
      if (!this.moduleLoaded) {
        this.moduleLoaded = this.ctx.audioWorklet.addModule(new URL('./mic-worklet.js', import.meta.url));
      }
      await this.moduleLoaded;
    } catch (err) {
      this.moduleLoaded = null;
      stream.getTracks().forEach((t) => t.stop());
      throw new MicError('failed', `The audio processor could not be loaded: ${err && err.message ? err.message : err}`);
    }
    this.stream = stream;
    this.source = this.ctx.createMediaStreamSource(stream);
    this.node = new AudioWorkletNode(this.ctx, 'avatar-mic', {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: 'explicit',
      processorOptions: { outRate: 16000, frameMs: 20 },
    });
    this.node.port.onmessage = (ev) => {
      this.h.onFrame(ev.data.pcm);
      this.h.onLevel?.(ev.data.level);
    };
    this.source.connect(this.node);
    for (const track of stream.getAudioTracks()) {
      track.onended = () => {
        this.stop();
        this.h.onEnded?.();
      };
    }
  }

  stop() {
    if (!this.stream) return;
    try { this.source.disconnect(); } catch { /* already */ }
    this.node.port.onmessage = null;
    try { this.node.disconnect(); } catch { /* already */ }
    for (const t of this.stream.getTracks()) {
      t.onended = null;
      t.stop();
    }
    this.stream = this.source = this.node = null;
    this.h.onLevel?.(0);
  }
}
