// The page's words in each language. The language is the visitor's choice (the picker, kept in
// localStorage), else the persona's (`ready` carries persona.language), else English.
// Static labels carry data-i18n="key" (text) or data-i18n-placeholder / data-i18n-title="key".

const CHOICE_KEY = 'avatar.language';

export const LANGUAGES = { en: 'English', zh: '中文' };

const STRINGS = {
  en: {
    connecting: 'connecting…', connected: 'Connected', dismiss: 'Dismiss',
    voiceOnly: 'Voice only (video is off on this server)',
    clickToStart: 'Click to start', startSub: "turns on your microphone and the avatar's voice",
    startMic: 'Start microphone', micOn: 'Microphone on', starting: 'Starting…',
    micTitleOff: 'Click to turn the microphone on', micTitleOn: 'Click to turn the microphone off',
    micLevel: 'Microphone level', interrupt: 'Interrupt', interruptTitle: 'Stop the avatar talking',
    face: 'Face', language: 'Language', typeMessage: 'Type a message…', message: 'Message', send: 'Send',
    heard: 'Heard', interrupted: '(interrupted)', resumed: 'Conversation resumed', earlier: 'Your earlier conversation',
    listening: 'listening', thinking: 'thinking', speaking: 'speaking',
  },
  zh: {
    connecting: '正在连接…', connected: '已连接', dismiss: '关闭',
    voiceOnly: '仅语音（此服务器未开启视频）',
    clickToStart: '点击开始', startSub: '打开麦克风和数字人的声音',
    startMic: '打开麦克风', micOn: '麦克风已开', starting: '正在启动…',
    micTitleOff: '点击打开麦克风', micTitleOn: '点击关闭麦克风',
    micLevel: '麦克风音量', interrupt: '打断', interruptTitle: '让数字人停止说话',
    face: '形象', language: '语言', typeMessage: '输入消息…', message: '消息', send: '发送',
    heard: '已听到', interrupted: '（已打断）', resumed: '已恢复对话', earlier: '之前的对话',
    listening: '正在听', thinking: '正在想', speaking: '正在说',
  },
};

let current = 'en';

function supported(lang) {
  const base = String(lang || '').toLowerCase().split(/[-_]/)[0];
  return Object.prototype.hasOwnProperty.call(STRINGS, base) ? base : null;
}

function saved() {
  try { return supported(localStorage.getItem(CHOICE_KEY)); } catch { return null; }
}

export function language() { return current; }

// The string for `key` in the page's language (English when a language lacks it).
export function t(key) {
  return (STRINGS[current] && STRINGS[current][key]) || STRINGS.en[key] || key;
}

export function applyLanguage(lang) {
  current = supported(lang) || 'en';
  document.documentElement.lang = current === 'zh' ? 'zh-CN' : current;
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of document.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
  for (const el of document.querySelectorAll('[data-i18n-label]')) el.setAttribute('aria-label', t(el.dataset.i18nLabel));
  const picker = document.getElementById('lang-picker');
  if (picker) picker.value = current;
  document.dispatchEvent(new CustomEvent('avatar-language', { detail: current }));
}

// The persona's language applies unless the visitor chose one.
export function usePersonaLanguage(personaLanguage) {
  applyLanguage(saved() || supported(personaLanguage) || 'en');
}

export function setupLanguagePicker() {
  const picker = document.getElementById('lang-picker');
  if (!picker) return;
  picker.replaceChildren(...Object.entries(LANGUAGES).map(([code, name]) => {
    const o = document.createElement('option');
    o.value = code;
    o.textContent = name;
    return o;
  }));
  picker.addEventListener('change', () => {
    try { localStorage.setItem(CHOICE_KEY, picker.value); } catch { /* private mode: the choice lasts this page */ }
    applyLanguage(picker.value);
  });
  applyLanguage(saved() || 'en');
}
