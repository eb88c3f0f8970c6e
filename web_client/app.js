// avatar browser client: wires the socket, microphone, scheduled playback, face video and the UI.
// Protocol: docs/protocol.md.

import { KIND_AUDIO, KIND_VIDEO, parseMediaFrame, pcm16ToFloat32, socketUrl, ReconnectingSocket } from './protocol.js';
import { AudioPlayer } from './player.js';
import { VideoView } from './video.js';
import { Microphone } from './mic.js';
import { ChatLog } from './chat.js';
import { t, setupLanguagePicker, usePersonaLanguage } from './i18n.js';

const $ = (id) => document.getElementById(id);
const SESSION_KEY = 'avatar.session_id';
const RESUME_KEY = 'avatar.resume_key'; // the secret `ready` gives with session_id; resuming needs it
const USER_KEY_PREFIX = 'avatar.user_key.'; // + user_id: the secret `ready` gives for a new user id
const FACE_KEY = 'avatar.face';
const PLAYBACK_INTERVAL_MS = 250;
const MAX_SEND_BUFFER = 512 * 1024; // drop microphone frames rather than queue seconds of them

// Figures for people debugging and for the browser test.
const stats = {
  framesDrawn: 0,
  audioChunksPlayed: 0,
  audioSecondsScheduled: 0,
  lastDrawnPosition: null,
  lastAudioPosition: null,
  avOffsetMs: null,
  lastDrawnTurn: null,
  audioChunksReceived: 0,
  audioChunksScheduled: 0,
  audioPlaying: false,
  framesReceived: 0,
  framesDropped: 0,
  framesLate: 0, // frames that arrived after their time on the audio clock
  frameArrivalLeadMs: null, // last frame: its position minus the audio clock when it arrived
  frameDecodedLeadMs: null, // the same, once decoded
  frameDecodeErrors: 0,
  rebases: 0,
  micFramesSent: 0,
  playbackSent: 0,
  connection: 'connecting',
  agentState: null,
  sessionId: null,
};
window.avatarStats = stats;

const page = new URLSearchParams(window.location.search);
const ctx = new AudioContext({ latencyHint: 'interactive' });
const player = new AudioPlayer(ctx, stats);
const canvas = $('face');
const video = new VideoView(canvas, player, stats);
const chat = new ChatLog($('chat-log'), $('transcript'));

let ready = false; // `ready` received on the current connection
let fatalMessage = ''; // last fatal error, shown until the next successful connection
let sessionRetryTimer = null;
let helloSessionId = null; // the session this connection asked to resume
let failedConnects = 0; // connection attempts in a row that never opened

function storage(key, value) {
  try {
    if (value === undefined) return window.localStorage.getItem(key);
    if (value === null) window.localStorage.removeItem(key);
    else window.localStorage.setItem(key, value);
  } catch {
    /* storage disabled: the conversation just won't resume on reload */
  }
  return null;
}

// ---------------------------------------------------------------- status badges and errors

function setConnState(state, text) {
  const b = $('conn-state');
  b.className = `badge conn-${state}`;
  b.textContent = text;
  stats.connection = state;
}

function setAgentState(state) {
  const b = $('agent-state');
  b.className = `badge agent-${state || 'idle'}`;
  b.textContent = state ? t(state) : '—';
  stats.agentState = state || null;
}

let bannerTimer = null;
function showError(text, { sticky = true } = {}) {
  $('error-text').textContent = text;
  $('error-banner').classList.remove('hidden');
  clearTimeout(bannerTimer);
  if (!sticky) bannerTimer = setTimeout(hideError, 12000);
}
function hideError() {
  $('error-banner').classList.add('hidden');
}
$('error-close').addEventListener('click', hideError);

// ---------------------------------------------------------------- audio unlock

async function unlockAudio() {
  if (ctx.state !== 'running') {
    try {
      await ctx.resume();
    } catch (err) {
      console.warn('avatar: audio could not start', err);
    }
  }
}
// Any gesture may unlock sound (a typed message, the face picker...).
for (const type of ['pointerdown', 'keydown']) window.addEventListener(type, unlockAudio, { capture: true });

// ---------------------------------------------------------------- microphone

const mic = new Microphone(ctx, {
  onFrame(pcm) {
    if (!ready || !socket.isOpen || socket.bufferedAmount > MAX_SEND_BUFFER) return;
    socket.send(pcm);
    stats.micFramesSent += 1;
  },
  onLevel(rms) {
    const db = 20 * Math.log10(rms + 1e-6);
    const pct = Math.max(0, Math.min(1, (db + 60) / 54)) * 100;
    $('mic-level').style.width = `${pct.toFixed(0)}%`;
  },
  onEnded() {
    updateMicButton();
    showMicMessage('The microphone stopped (it was unplugged or disabled). Press "Start microphone" to try again.');
  },
});

function showMicMessage(text) {
  const m = $('mic-message');
  m.textContent = text || '';
  m.classList.toggle('hidden', !text);
}

function updateMicButton() {
  const b = $('mic-btn');
  b.classList.toggle('mic-on', mic.active);
  b.classList.toggle('mic-off', !mic.active);
  b.setAttribute('aria-pressed', String(mic.active));
  $('mic-label').textContent = t(mic.active ? 'micOn' : 'startMic');
  b.title = t(mic.active ? 'micTitleOn' : 'micTitleOff');
}

async function startMic() {
  showMicMessage('');
  $('mic-btn').disabled = true;
  $('mic-label').textContent = t('starting');
  try {
    await mic.start();
  } catch (err) {
    showMicMessage(err.message);
    console.warn('avatar: microphone', err);
  } finally {
    $('mic-btn').disabled = false;
    updateMicButton();
  }
}

$('mic-btn').addEventListener('click', async () => {
  await unlockAudio();
  hideStartOverlay();
  if (mic.active) {
    mic.stop();
    updateMicButton();
  } else {
    await startMic();
  }
});

function hideStartOverlay() {
  $('start-overlay').classList.add('hidden');
}

$('start-overlay').addEventListener('click', async () => {
  hideStartOverlay();
  await unlockAudio();
  await startMic();
});

// ---------------------------------------------------------------- socket

const socket = new ReconnectingSocket(socketUrl(), {
  onOpen() {
    ready = false;
    if (failedConnects >= 3) hideError(); // the "cannot connect" banner
    failedConnects = 0;
    player.reset();
    video.reset();
    const hello = { type: 'hello' };
    const sid = storage(SESSION_KEY);
    helloSessionId = sid;
    if (sid) {
      hello.session_id = sid;
      const key = storage(RESUME_KEY);
      if (key) hello.resume_key = key;
    }
    const user = page.get('user');
    if (user) {
      hello.user_id = user;
      const key = storage(USER_KEY_PREFIX + user);
      if (key) hello.user_key = key;
    }
    const face = storage(FACE_KEY);
    if (face) hello.face = face;
    if (page.get('video') === '0') hello.video = false;
    socket.send(hello);
    setConnState('connected', 'Connected, waiting for the server…');
  },
  onJson: handleMessage,
  onBinary: handleMedia,
  onClose(ev, wasOpen) {
    ready = false;
    failedConnects = wasOpen ? 0 : failedConnects + 1;
    if (failedConnects === 3) {
      // The browser does not tell why a handshake failed: name the likely causes.
      showError(`Cannot connect to the server at ${window.location.host}. Check that "avatar serve" is ` +
        'running. A server that listens beyond localhost needs its access token: open this page as ' +
        '…/?token=TOKEN (the token is printed by "avatar serve").');
    }
    clearTimeout(sessionRetryTimer);
    player.reset();
    video.reset();
    setAgentState(null);
    stats.audioPlaying = false;
    if (ev && ev.code === 1008) {
      fatalMessage = `The server refused the connection${ev.reason ? `: ${ev.reason}` : ''}. ` +
        'If it needs a token, open the page with ?token=… in the address.';
      showError(fatalMessage);
    } else if (ev && ev.code === 1009) {
      showError('The server closed the connection: a message was too large.');
    }
  },
  onStatus(s) {
    if (s.state === 'connecting') {
      reconnectAt = 0;
      setConnState('connecting', s.attempt ? `Connecting… (attempt ${s.attempt + 1})` : 'Connecting…');
    } else if (s.state === 'reconnecting') {
      reconnectAt = performance.now() + s.delayMs;
      showReconnectCountdown();
    } else if (s.state === 'error') {
      setConnState('error', `Error: ${s.message}`);
    }
  },
});

let reconnectAt = 0;
function showReconnectCountdown() {
  const left = Math.max(0, reconnectAt - performance.now());
  if (!reconnectAt || left <= 0) return;
  const why = fatalMessage ? `Error: ${fatalMessage} — ` : failedConnects ? 'Cannot connect — ' : 'Disconnected — ';
  setConnState(fatalMessage ? 'error' : 'reconnecting', `${why}reconnecting in ${Math.ceil(left / 1000)} s`);
  setTimeout(showReconnectCountdown, Math.min(1000, left % 1000 || 1000));
}

function handleMessage(msg) {
  switch (msg.type) {
    case 'ready': return onReady(msg);
    case 'state': return setAgentState(msg.state);
    case 'vad':
      $('mic-btn').classList.toggle('hearing', msg.event === 'speech_start');
      if (msg.event === 'speech_start') chat.setTranscript('…', false);
      return undefined;
    case 'transcript':
      if (msg.final) {
        chat.setTranscript(msg.text, true);
        if (msg.text && msg.text.trim()) chat.userMessage(msg.text.trim(), 'voice');
      } else {
        chat.setTranscript(msg.text, false);
      }
      return undefined;
    case 'turn_start': return chat.turnStart(msg);
    case 'reply_delta': return chat.replyDelta(msg);
    case 'interrupt':
      player.interrupt(msg.turn_id, msg.position);
      video.interrupt(msg.turn_id, msg.position);
      return undefined;
    case 'turn_end': return chat.turnEnd(msg);
    case 'latency': return chat.latency(msg);
    case 'error': return onError(msg);
    case 'pong': return undefined;
    default:
      console.debug('avatar: unknown message', msg);
      return undefined;
  }
}

function onReady(msg) {
  ready = true;
  fatalMessage = '';
  clearTimeout(sessionRetryTimer);
  socket.markHealthy();
  if (msg.session_id) {
    storage(SESSION_KEY, msg.session_id);
    storage(RESUME_KEY, msg.resume_key || null);
  }
  if (msg.user_id && msg.user_key) storage(USER_KEY_PREFIX + msg.user_id, msg.user_key);
  stats.sessionId = msg.session_id || null;
  const rate = msg.audio && msg.audio.output_rate;
  player.reset(Number.isFinite(rate) && rate > 0 ? rate : 22050);
  video.configure(msg.video || null);
  const hasVideo = !!msg.video;
  $('stage').classList.toggle('audio-only', !hasVideo);
  canvas.classList.toggle('hidden', !hasVideo);
  $('no-video').classList.toggle('hidden', hasVideo);

  const name = (msg.persona && msg.persona.name) || 'avatar';
  usePersonaLanguage(msg.persona && msg.persona.language);
  $('persona-name').textContent = name;
  // The voice the persona speaks with (the face's own, or the operator's): shown so a mismatch is visible.
  $('persona-voice').textContent = msg.voice ? `· ${msg.voice}` : '';
  document.title = `${name} · avatar`;
  chat.setAgentName(name);
  chat.renderHistory(msg.history, msg.resumed);
  setupFacePicker(msg.faces, msg.face);
  setConnState('connected', t('connected'));
  setAgentState('listening');
}

function onError(msg) {
  const text = msg.message || msg.code || 'unknown error';
  console.warn('avatar: server error', msg);
  if (msg.code === 'unknown_session') {
    // The server no longer knows the saved conversation: start a new one.
    if (storage(SESSION_KEY) === helloSessionId) {
      storage(SESSION_KEY, null);
      storage(RESUME_KEY, null);
    }
    showError('The saved conversation was not found on the server; starting a new one.', { sticky: false });
    clearTimeout(sessionRetryTimer);
    sessionRetryTimer = setTimeout(() => { if (!ready) socket.reconnectNow(); }, 1000);
    return;
  }
  if (msg.fatal) {
    fatalMessage = text;
    setConnState('error', `Error: ${text}`);
  }
  if (msg.code === 'bad_face' && !ready) storage(FACE_KEY, null); // the saved face is gone from the server
  const recoverable = ['stage_failed', 'rate_limited', 'bad_message', 'bad_face'].includes(msg.code);
  showError(`${text}${msg.code ? ` [${msg.code}]` : ''}`, { sticky: !recoverable || msg.fatal });
  if (msg.code === 'stage_failed') chat.system(`Something went wrong: ${text}`, 'error');
}

function handleMedia(buffer) {
  if (!ready) return;
  const f = parseMediaFrame(buffer);
  if (!f) {
    console.warn('avatar: malformed media frame', buffer.byteLength);
    return;
  }
  if (f.kind === KIND_AUDIO) {
    stats.audioChunksReceived += 1;
    if (player.isCut(f.turnId, f.position)) return;
    player.play(f.turnId, f.position, pcm16ToFloat32(f.buffer, f.payloadOffset));
  } else if (f.kind === KIND_VIDEO) {
    video.push(f.turnId, f.position, f.buffer, f.payloadOffset);
  }
}

setInterval(() => {
  if (!ready || !socket.isOpen) return;
  socket.send({ type: 'playback', position: player.playbackPosition() });
  stats.playbackSent += 1;
}, PLAYBACK_INTERVAL_MS);

// ---------------------------------------------------------------- face picker, text, interrupt

function setupFacePicker(faces, current) {
  const wrap = $('face-picker-wrap');
  const sel = $('face-picker');
  const list = Array.isArray(faces) ? faces : [];
  wrap.classList.toggle('hidden', list.length <= 1);
  sel.replaceChildren(...list.map((f) => {
    const o = document.createElement('option');
    o.value = f;
    o.textContent = f;
    return o;
  }));
  if (current) sel.value = current;
}

$('face-picker').addEventListener('change', (ev) => {
  const name = ev.target.value;
  storage(FACE_KEY, name);
  socket.send({ type: 'face', name });
});

$('text-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('text-input');
  const text = input.value.trim();
  if (!text) return;
  if (!ready || !socket.isOpen) {
    showError('Not connected to the server: the message was not sent. It will be possible again once reconnected.',
      { sticky: false });
    return;
  }
  unlockAudio();
  socket.send({ type: 'text', text });
  chat.userMessage(text, 'text').classList.add('pending');
  input.value = '';
});

$('interrupt-btn').addEventListener('click', () => {
  // Silence at once; the server confirms with an `interrupt` event (and the turn's `heard` text).
  const pos = player.playbackPosition();
  for (const t of player.interruptAll()) video.interrupt(t, pos);
  socket.send({ type: 'interrupt' });
});

// ---------------------------------------------------------------- render loop

function frame() {
  video.tick();
  stats.audioPlaying = player.playing;
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);

updateMicButton();
socket.connect();

// ---------------------------------------------------------------- language
setupLanguagePicker();
document.addEventListener('avatar-language', () => {
  updateMicButton();
  setAgentState(stats.agentState);
  if (stats.connection === 'connected') setConnState('connected', t('connected'));
});
