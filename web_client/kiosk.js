// The kiosk page (/kiosk, docs/kiosk.md): a face on a screen in a public place. An operator clicks once
// (browsers want one gesture before sound and capture); from then on it runs on its own:
// - every connection is a new conversation (hello with "kiosk": true, never a session_id);
// - the camera sends a small JPEG every FRAME_MS for presence detection on the server (never stored);
// - the microphone is only sent while a visitor is there (or always, without a camera: wake on speech);
// - the server ends the visit when the visitor left, closes the connection, and the page reconnects fresh;
// - a server restart or a network loss: the socket reconnects with exponential backoff; a silent
//   connection is dropped and reopened by a watchdog.
// Reuses the chat page's modules as they are: protocol.js, player.js, video.js, mic.js.

import { KIND_AUDIO, KIND_VIDEO, parseMediaFrame, pcm16ToFloat32, socketUrl, ReconnectingSocket } from './protocol.js';
import { AudioPlayer } from './player.js';
import { VideoView } from './video.js';
import { Microphone } from './mic.js';

const $ = (id) => document.getElementById(id);
const FRAME_MS = 500; // camera frames for presence: 2 per second is plenty to notice a person
const FRAME_WIDTH = 320;
const FRAME_HEIGHT = 240;
const PLAYBACK_INTERVAL_MS = 250;
const PING_INTERVAL_MS = 10000;
const SILENT_CONNECTION_MS = 30000; // nothing from the server this long: the connection is dead
const MAX_SEND_BUFFER = 512 * 1024;
const CAPTION_CLEAR_MS = 15000; // captions fade this long after the last words

// Figures for the operator's debugging and for the browser test (tests/test_kiosk.py).
const stats = {
  connection: 'connecting', sessionId: null, sessions: 0, armed: false, camera: false, present: false,
  visits: 0, visitEnds: 0, greetings: 0, turnsEnded: 0, replies: [], transcripts: [],
  micFramesSent: 0, cameraFramesSent: 0, framesDrawn: 0, framesReceived: 0, audioChunksScheduled: 0,
  audioChunksPlayed: 0, audioSecondsScheduled: 0, audioPlaying: false, rebases: 0, framesDropped: 0,
  framesLate: 0, frameDecodeErrors: 0, lastAudioPosition: null, agentState: null, errors: [],
};
window.kioskStats = stats;

const ctx = new AudioContext({ latencyHint: 'interactive' });
const player = new AudioPlayer(ctx, stats);
const video = new VideoView($('face'), player, stats);

let ready = false;
let armed = false;
let lastMessageAt = performance.now();
let replyTurn = null;
let captionTimer = null;

// ---------------------------------------------------------------- captions and status

function setStatus(state, text = '') {
  stats.connection = state;
  $('status-dot').className = `dot ${state}`;
  $('status-text').textContent = text;
}

function caption(id, text, { partial = false } = {}) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle('partial', partial);
  document.body.classList.toggle('talking', !!($('agent-caption').textContent || $('user-caption').textContent));
  clearTimeout(captionTimer);
  captionTimer = setTimeout(fadeCaptions, CAPTION_CLEAR_MS);
}

function fadeCaptions() {
  // Not while the agent thinks or talks: a slow answer keeps the question on screen.
  if (stats.agentState !== 'listening' || stats.audioPlaying) {
    captionTimer = setTimeout(fadeCaptions, 1000);
    return;
  }
  clearCaptions();
}

function clearCaptions() {
  $('agent-caption').textContent = '';
  $('user-caption').textContent = '';
  document.body.classList.remove('talking');
}

function setPresent(present) {
  stats.present = present;
  document.body.classList.toggle('visitor', present);
  document.body.classList.toggle('idle', !present);
}

// ---------------------------------------------------------------- arming: sound, microphone, camera

const mic = new Microphone(ctx, {
  onFrame(pcm) {
    // Nobody there (and a camera to tell): nothing from the room goes to the server.
    if (!ready || !socket.isOpen || (stats.camera && !stats.present)) return;
    if (socket.bufferedAmount > MAX_SEND_BUFFER) return;
    socket.send(pcm);
    stats.micFramesSent += 1;
  },
  onEnded() {
    setTimeout(() => mic.start().catch((err) => console.warn('avatar kiosk: microphone', err)), 2000);
  },
});

const camera = $('camera');
const grab = document.createElement('canvas');
grab.width = FRAME_WIDTH;
grab.height = FRAME_HEIGHT;

async function startCamera() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: FRAME_WIDTH }, height: { ideal: FRAME_HEIGHT }, frameRate: { ideal: 5 } },
      audio: false,
    });
    camera.srcObject = stream;
    await camera.play();
    stats.camera = true;
    for (const track of stream.getVideoTracks()) {
      track.onended = () => { stats.camera = false; setTimeout(startCamera, 5000); };
    }
  } catch (err) {
    // No camera: the kiosk wakes on speech instead (the microphone is always sent).
    stats.camera = false;
    console.warn('avatar kiosk: no camera, waking on speech', err);
  }
}

function stopCamera() {
  stats.camera = false;
  const stream = camera.srcObject;
  camera.srcObject = null;
  if (stream) for (const t of stream.getTracks()) { t.onended = null; t.stop(); }
}

function sendCameraFrame() {
  if (!stats.camera || !ready || !socket.isOpen || camera.readyState < 2) return;
  const g = grab.getContext('2d');
  g.drawImage(camera, 0, 0, FRAME_WIDTH, FRAME_HEIGHT);
  const jpeg = grab.toDataURL('image/jpeg', 0.7).split(',', 2)[1];
  if (jpeg && socket.send({ type: 'camera_frame', jpeg })) stats.cameraFramesSent += 1;
}
setInterval(sendCameraFrame, FRAME_MS);

async function arm() {
  if (armed) return;
  armed = true;
  $('arm').classList.add('hidden');
  try { await ctx.resume(); } catch (err) { console.warn('avatar kiosk: sound', err); }
  await startCamera();
  try { await mic.start(); } catch (err) { console.warn('avatar kiosk: microphone', err); }
  stats.armed = true;
}

$('arm').addEventListener('click', arm);
// Started with --autoplay-policy=no-user-gesture-required (docs/kiosk.md), sound may play without a click:
// then a reloaded or restarted page arms itself, with nobody there to click.
ctx.resume().then(() => { if (ctx.state === 'running') arm(); }).catch(() => {});

// ---------------------------------------------------------------- the connection

const socket = new ReconnectingSocket(socketUrl(), {
  onOpen() {
    ready = false;
    player.reset();
    video.reset();
    socket.send({ type: 'hello', kiosk: true }); // a new conversation, every time
    setStatus('connected', '');
  },
  onJson(msg) {
    lastMessageAt = performance.now();
    handleMessage(msg);
  },
  onBinary(buffer) {
    lastMessageAt = performance.now();
    handleMedia(buffer);
  },
  onClose() {
    ready = false;
    player.reset();
    video.reset();
    setPresent(false);
    stats.agentState = null;
  },
  onStatus(s) {
    if (s.state === 'connecting') setStatus('connecting', '');
    else if (s.state === 'reconnecting') setStatus('reconnecting', `reconnecting in ${Math.ceil(s.delayMs / 1000)} s`);
  },
}, { minDelayMs: 500, maxDelayMs: 10000 });

function handleMessage(msg) {
  switch (msg.type) {
    case 'ready':
      ready = true;
      socket.markHealthy();
      stats.sessionId = msg.session_id || null;
      stats.sessions += 1;
      player.reset(msg.audio && msg.audio.output_rate > 0 ? msg.audio.output_rate : 22050);
      video.configure(msg.video || null);
      setPresent(false);
      return;
    case 'presence':
      setPresent(!!msg.present);
      if (msg.present) stats.visits += 1;
      return;
    case 'visit_end':
      // The server closes this connection next; the socket reconnects into a fresh conversation.
      stats.visitEnds += 1;
      setPresent(false);
      clearCaptions();
      return;
    case 'state':
      stats.agentState = msg.state;
      return;
    case 'vad':
      // The visitor speaks again: the words come with the first partial transcript; until then the last
      // question stays (dimmed) rather than flashing an empty caption.
      if (msg.event === 'speech_start') {
        caption('user-caption', $('user-caption').textContent || '…', { partial: true });
      }
      return;
    case 'transcript':
      if (msg.text && msg.text.trim()) caption('user-caption', msg.text.trim(), { partial: !msg.final });
      if (msg.final && msg.text) stats.transcripts.push({ session: stats.sessionId, text: msg.text.trim() });
      return;
    case 'turn_start':
      replyTurn = { id: msg.turn_id, text: '', source: msg.source };
      if (msg.source === 'presence') stats.greetings += 1;
      return;
    case 'reply_delta':
      if (replyTurn && replyTurn.id === msg.turn_id) {
        replyTurn.text += msg.text;
        caption('agent-caption', replyTurn.text);
      }
      return;
    case 'interrupt':
      player.interrupt(msg.turn_id, msg.position);
      video.interrupt(msg.turn_id, msg.position);
      return;
    case 'turn_end':
      stats.turnsEnded += 1;
      stats.replies.push({ session: stats.sessionId, source: replyTurn ? replyTurn.source : null,
        text: msg.heard || '', full: msg.reply || '' });
      return;
    case 'error':
      stats.errors.push(`${msg.code}: ${msg.message}`);
      if (msg.code === 'presence_unavailable') stopCamera(); // the server cannot see: wake on speech
      console.warn('avatar kiosk: server error', msg);
      return;
    default:
      return;
  }
}

function handleMedia(buffer) {
  if (!ready) return;
  const f = parseMediaFrame(buffer);
  if (!f) return;
  if (f.kind === KIND_AUDIO) {
    if (!player.isCut(f.turnId, f.position)) player.play(f.turnId, f.position, pcm16ToFloat32(f.buffer, f.payloadOffset));
  } else if (f.kind === KIND_VIDEO) {
    video.push(f.turnId, f.position, f.buffer, f.payloadOffset);
  }
}

setInterval(() => {
  if (!ready || !socket.isOpen) return;
  socket.send({ type: 'playback', position: player.playbackPosition() });
}, PLAYBACK_INTERVAL_MS);

// Watchdog: a connection that looks open but brings nothing (a half-dead network path) is reopened.
setInterval(() => {
  if (!socket.isOpen) return;
  socket.send({ type: 'ping' });
  if (performance.now() - lastMessageAt > SILENT_CONNECTION_MS) {
    console.warn('avatar kiosk: the server has been silent; reconnecting');
    lastMessageAt = performance.now();
    socket.reconnectNow();
  }
}, PING_INTERVAL_MS);

function frame() {
  video.tick();
  stats.audioPlaying = player.playing;
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
setStatus('connecting', '');
socket.connect();
