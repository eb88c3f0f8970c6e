// The conversation log and the live transcript line.
import { t as tr } from './i18n.js';

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

const norm = (s) => (s || '').toLowerCase().replace(/[^\p{L}\p{N}]+/gu, ' ').trim();

function fmtMs(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return null;
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`;
}

export class ChatLog {
  constructor(logEl, transcriptEl) {
    this.log = logEl;
    this.transcript = transcriptEl;
    this.agentName = 'Avatar';
    this.turns = new Map(); // turn_id -> {el, textEl, metaEl, text}
    this.unboundUser = null; // the last user message not yet tied to a turn
  }

  setAgentName(name) {
    this.agentName = name || 'Avatar';
  }

  clear() {
    this.log.replaceChildren();
    this.turns.clear();
    this.unboundUser = null;
    this.setTranscript('', false);
  }

  renderHistory(history, resumed) {
    this.clear();
    for (const item of history || []) {
      if (!item || typeof item.text !== 'string') continue;
      if (item.role === 'user') this._message('user', 'You', item.text, 'history');
      else if (item.role === 'system') continue;
      else this._message('agent', this.agentName, item.text, 'history');
    }
    if (history && history.length) this.system(tr(resumed ? 'resumed' : 'earlier'));
    this._scroll();
  }

  system(text, kind = '') {
    const e = el('div', `sys ${kind}`.trim(), text);
    this.log.append(e);
    this._scroll();
    return e;
  }

  /** Live transcript: partial in grey, final in black. */
  setTranscript(text, final) {
    this.transcript.textContent = text || '';
    this.transcript.classList.toggle('partial', !final);
    this.transcript.classList.toggle('final', !!final);
    this.transcript.classList.toggle('empty', !text);
  }

  /** A user turn (final transcript or typed text), shown before the server starts answering it. */
  userMessage(text, source) {
    // A typed message is shown at once and echoed back by the server as a final transcript: one bubble.
    if (this.unboundUser && norm(this.unboundUser.text) === norm(text)) return this.unboundUser.el;
    const m = this._message('user', 'You', text, source);
    this.unboundUser = { el: m, text };
    return m;
  }

  turnStart(msg) {
    const userText = msg.user_text || '';
    if (this.unboundUser && norm(this.unboundUser.text) === norm(userText)) {
      this.unboundUser.el.dataset.turn = String(msg.turn_id);
      this.unboundUser.el.classList.remove('pending');
    } else if (userText) {
      const m = this._message('user', 'You', userText, msg.source);
      m.dataset.turn = String(msg.turn_id);
    }
    this.unboundUser = null;
    this._agent(msg.turn_id);
  }

  replyDelta(msg) {
    const t = this._agent(msg.turn_id);
    t.text += msg.text || '';
    t.heardEl.textContent = t.text;
    t.el.classList.add('streaming');
    this._scroll();
  }

  turnEnd(msg) {
    const t = this._agent(msg.turn_id);
    t.el.classList.remove('streaming');
    const reply = typeof msg.reply === 'string' ? msg.reply : t.text;
    t.text = reply;
    if (msg.interrupted) {
      t.el.classList.add('interrupted');
      const heard = typeof msg.heard === 'string' ? msg.heard : '';
      if (reply.startsWith(heard)) {
        t.heardEl.textContent = heard;
        t.unheardEl.textContent = reply.slice(heard.length);
      } else {
        t.heardEl.textContent = reply;
        t.unheardEl.textContent = '';
        t.heardNoteEl.textContent = `${tr('heard')}: “${heard}”`;
      }
      t.tagEl.textContent = tr('interrupted');
      t.unheardEl.title = 'Not heard: the reply was interrupted here';
    } else {
      t.heardEl.textContent = reply;
      t.unheardEl.textContent = '';
    }
    if (!reply && !msg.interrupted) t.heardEl.textContent = '…';
    const sources = Array.isArray(msg.sources) ? msg.sources.filter((s) => typeof s === 'string') : [];
    t.sourcesEl.textContent = sources.length ? `Sources: ${sources.join(', ')}` : '';
    this._scroll();
  }

  latency(msg) {
    const t = this._agent(msg.turn_id);
    const parts = [
      ['end of speech', msg.endpoint_ms],
      ['ASR', msg.asr_final_ms],
      ['first token', msg.llm_first_token_ms],
      ['first clause', msg.first_clause_ms],
      ['first audio', msg.tts_first_audio_ms],
      ['first frame', msg.first_frame_ms],
    ].map(([label, v]) => [label, fmtMs(v)]).filter(([, v]) => v !== null);
    t.latencyEl.replaceChildren();
    for (const [label, v] of parts) {
      const chip = el('span', 'lat');
      chip.append(el('span', 'lat-label', label), el('span', 'lat-value', v));
      t.latencyEl.append(chip);
    }
    t.latencyEl.title = 'Milliseconds from the end of your speech (or from sending the text)';
    this._scroll();
  }

  _agent(turnId) {
    let t = this.turns.get(turnId);
    if (t) return t;
    const m = this._message('agent', this.agentName, '', 'live');
    m.dataset.turn = String(turnId);
    const textEl = m.querySelector('.text');
    const heardEl = el('span', 'heard');
    const unheardEl = el('span', 'unheard');
    const tagEl = el('span', 'tag');
    textEl.replaceChildren(heardEl, unheardEl, tagEl);
    const heardNoteEl = el('div', 'heard-note');
    const sourcesEl = el('div', 'sources'); // knowledge files the reply drew on (turn_end.sources)
    const latencyEl = el('div', 'latency');
    m.append(heardNoteEl, sourcesEl, latencyEl);
    t = { el: m, heardEl, unheardEl, tagEl, heardNoteEl, sourcesEl, latencyEl, text: '' };
    this.turns.set(turnId, t);
    return t;
  }

  _message(role, who, text, source) {
    const m = el('div', `msg ${role}`);
    if (source) m.dataset.source = source;
    m.append(el('div', 'who', who), el('div', 'text', text));
    this.log.append(m);
    this._scroll();
    return m;
  }

  _scroll() {
    this.log.scrollTop = this.log.scrollHeight;
  }
}
