"""Animation controls: a small set of named floats per video frame, from phonemes, audio, or idle life.

A frame's controls are a plain ``dict`` (missing names mean neutral), so any source can drive any renderer:

==============  ==========  ==========================================================================
name            range       meaning (0 = the portrait as photographed)
==============  ==========  ==========================================================================
jaw_open        0 .. 1      jaw drop; 1 lowers the lower lip by ~0.38 mouth widths (a wide "ah")
lip_round       0 .. 1      corners pulled in, centre opened: "oo", "w", "sh"
lip_spread      0 .. 1      corners out and up (smile): "ee"
upper_lip       -1 .. 1     + raises the upper lip (shows the upper teeth, "f"); - lowers it (half as far)
lower_lip       -1 .. 1     + raises the lower lip until the lips meet and press ("m", "b", "p"), even
                            when the portrait's mouth is open at rest; - drops it (shows lower teeth)
blink_left      0 .. 1      subject's left eye (image right) closed by this fraction
blink_right     0 .. 1      subject's right eye (image left)
brow            -1 .. 1     + raises the brows, - lowers and knits them
head_yaw        degrees     + turns the face toward the viewer's right; keep within +-8
head_pitch      degrees     + nods down (chin down); keep within +-8
head_roll       degrees     + tilts clockwise in the image; keep within +-8
breath          0 .. 1      breathing: lifts the head region by up to 1.5 px
==============  ==========  ==========================================================================

Sources:

* ``phoneme_track``: IPA phonemes with timings -> visemes, blended with dominance functions
  (anticipation ~80 ms, carry-over ~60 ms; Cohen & Massaro style) so that consonants coarticulate with
  their vowels, plus closure envelopes that make m/b/p really close the lips and f/v tuck the lower lip.
  The jaw is scaled a little by the audio loudness when audio is given (stressed syllables open more).
* ``audio_track``: any speech audio alone: RMS energy (relative to the chunk's loud level) opens the jaw,
  the spectral centroid and the share of energy above 3.5 kHz decide rounding, spreading and fricatives.
  Smoothed with attack/release in both directions (no lag).
* ``IdleMotion``: blinks every 2-6 s (~170 ms, sometimes doubled), slow head motion (sums of slow
  sinusoids), breathing; a pure function of time and the seed.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from avatar.face.idle import IdleMotion  # noqa: F401 - part of this module's API (control_stream uses it)

CONTROLS: dict[str, tuple[float, float]] = {
    "jaw_open": (0.0, 1.0),
    "lip_round": (0.0, 1.0),
    "lip_spread": (0.0, 1.0),
    "upper_lip": (-1.0, 1.0),
    "lower_lip": (-1.0, 1.0),
    "blink_left": (0.0, 1.0),
    "blink_right": (0.0, 1.0),
    "brow": (-1.0, 1.0),
    "head_yaw": (-10.0, 10.0),
    "head_pitch": (-10.0, 10.0),
    "head_roll": (-10.0, 10.0),
    "breath": (0.0, 1.0),
}
CONTROL_NAMES = tuple(CONTROLS)
MOUTH = ("jaw_open", "lip_round", "lip_spread", "upper_lip", "lower_lip")


def neutral() -> dict[str, float]:
    return {name: 0.0 for name in CONTROL_NAMES}


def clip_controls(controls: Mapping[str, float]) -> dict[str, float]:
    out = neutral()
    for name, value in controls.items():
        if name in CONTROLS:
            lo, hi = CONTROLS[name]
            out[name] = float(min(max(float(value), lo), hi))
    return out


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# --------------------------------------------------------------------------------------------------
# Visemes

# (jaw_open, lip_round, lip_spread, upper_lip, lower_lip)
_V = {
    # vowels
    "a": (0.75, 0.0, 0.1, 0, 0), "ɑ": (0.80, 0.1, 0.0, 0, 0), "ɐ": (0.60, 0.0, 0.05, 0, 0),
    "æ": (0.65, 0.0, 0.30, 0, 0), "ɛ": (0.50, 0.0, 0.30, 0, 0), "e": (0.40, 0.0, 0.40, 0, 0),
    "ɪ": (0.30, 0.0, 0.40, 0, 0), "i": (0.22, 0.0, 0.60, 0, 0), "ɔ": (0.60, 0.55, 0.0, 0, 0),
    "o": (0.45, 0.70, 0.0, 0, 0), "ʊ": (0.28, 0.60, 0.0, 0, 0), "u": (0.20, 0.90, 0.0, 0, 0),
    "ə": (0.38, 0.0, 0.05, 0, 0), "ʌ": (0.55, 0.0, 0.05, 0, 0), "ɜ": (0.40, 0.15, 0.0, 0, 0),
    "ɚ": (0.35, 0.30, 0.0, 0, 0), "ɝ": (0.40, 0.30, 0.0, 0, 0), "ᵻ": (0.28, 0.0, 0.30, 0, 0),
    "ɒ": (0.70, 0.40, 0.0, 0, 0), "y": (0.20, 0.80, 0.0, 0, 0), "ø": (0.35, 0.65, 0.0, 0, 0),
    "œ": (0.50, 0.50, 0.0, 0, 0), "ɨ": (0.25, 0.0, 0.15, 0, 0), "ʉ": (0.22, 0.70, 0.0, 0, 0),
    "ɯ": (0.22, 0.0, 0.30, 0, 0), "ɤ": (0.40, 0.0, 0.10, 0, 0), "ɵ": (0.35, 0.50, 0.0, 0, 0),
    "ɘ": (0.35, 0.0, 0.10, 0, 0), "ɞ": (0.45, 0.40, 0.0, 0, 0), "ɶ": (0.65, 0.40, 0.0, 0, 0),
    "ɿ": (0.25, 0.0, 0.20, 0, 0), "ʅ": (0.25, 0.10, 0.0, 0, 0),
    # consonants
    "p": (0.0, 0.0, 0.0, 0, 1.0), "b": (0.0, 0.0, 0.0, 0, 1.0), "m": (0.0, 0.0, 0.0, 0, 1.0),
    "f": (0.10, 0.0, 0.10, 0.35, 0.6), "v": (0.10, 0.0, 0.10, 0.35, 0.6),
    "θ": (0.18, 0.0, 0.10, 0.15, 0), "ð": (0.18, 0.0, 0.10, 0.15, 0),
    "t": (0.20, 0.0, 0.15, 0.05, 0), "d": (0.20, 0.0, 0.15, 0.05, 0), "n": (0.20, 0.0, 0.10, 0, 0),
    "l": (0.25, 0.0, 0.10, 0, 0), "ɾ": (0.25, 0.0, 0.10, 0, 0), "ɫ": (0.25, 0.0, 0.05, 0, 0),
    "s": (0.12, 0.0, 0.35, 0.15, 0), "z": (0.12, 0.0, 0.35, 0.15, 0),
    "ʃ": (0.15, 0.55, 0.0, 0.25, 0), "ʒ": (0.15, 0.55, 0.0, 0.25, 0),
    "ɕ": (0.15, 0.20, 0.20, 0.15, 0), "ʑ": (0.15, 0.20, 0.20, 0.15, 0),
    "ʂ": (0.15, 0.40, 0.0, 0.20, 0), "ʐ": (0.15, 0.40, 0.0, 0.20, 0),
    "ɹ": (0.20, 0.45, 0.0, 0, 0), "r": (0.20, 0.40, 0.0, 0, 0), "ʁ": (0.25, 0.20, 0.0, 0, 0),
    "w": (0.10, 0.90, 0.0, 0, 0), "ʍ": (0.10, 0.90, 0.0, 0, 0), "ɥ": (0.10, 0.85, 0.0, 0, 0),
    "j": (0.15, 0.0, 0.45, 0, 0), "ç": (0.20, 0.0, 0.40, 0, 0),
    "k": (0.28, 0.0, 0.0, 0, 0), "g": (0.28, 0.0, 0.0, 0, 0), "ɡ": (0.28, 0.0, 0.0, 0, 0),
    "ŋ": (0.25, 0.0, 0.0, 0, 0), "x": (0.28, 0.0, 0.0, 0, 0), "ɣ": (0.28, 0.0, 0.0, 0, 0),
    "h": (0.35, 0.0, 0.0, 0, 0), "ɦ": (0.35, 0.0, 0.0, 0, 0), "ʔ": (0.20, 0.0, 0.0, 0, 0),
    "ɲ": (0.20, 0.0, 0.10, 0, 0), "ʎ": (0.22, 0.0, 0.10, 0, 0), "ɭ": (0.25, 0.0, 0.05, 0, 0),
    "β": (0.05, 0.20, 0.0, 0, 0.7), "ɸ": (0.05, 0.20, 0.0, 0, 0.7), "ʋ": (0.10, 0.0, 0.0, 0.2, 0.5),
}
_VOWELS = set("aɑɐæɛeɪiɔoʊuəʌɜɚɝᵻɒyøœɨʉɯɤɵɘɞɶɿʅ")
_BILABIAL = set("pbm")
_LABIODENTAL = set("fvʋ")
_SKIP = set("ˈˌːˑ‿͡_-'0123456789↗↘|‖̃ ")  # stress, length, ties, pads, tone numbers, word gaps
_SILENCE = set(".,;:!?…—–^$()\"«»¡¿、。，！？；：")
_MOUTH_IDX = {name: i for i, name in enumerate(MOUTH)}


@dataclass
class _Segment:
    kind: str  # vowel | consonant | bilabial | labiodental | silence
    target: np.ndarray  # (5,)
    dominance: np.ndarray  # (5,)
    start: float
    end: float


def viseme(symbol: str) -> tuple[str, tuple[float, ...] | None]:
    """(kind, targets) for one IPA symbol; kind "skip" for marks that take no mouth shape of their own."""
    s = symbol.strip()
    if not s:
        return "skip", None
    if all(ch in _SILENCE for ch in s):
        return "silence", (0.0, 0.0, 0.0, 0.0, 0.0)
    if s in _V:
        ch = s
    else:
        base = "".join(ch for ch in unicodedata.normalize("NFD", s) if not unicodedata.combining(ch))
        letters = [ch for ch in base if ch not in _SKIP and ch not in _SILENCE]
        if not letters:
            return "skip", None
        # Affricates and diphthongs ("tʃ", "aɪ"): the consonant's release or the vowel nucleus shows most.
        vowels = [ch for ch in letters if ch in _VOWELS]
        ch = vowels[0] if vowels else (letters[-1] if letters[-1] in _V else letters[0])
        if ch not in _V:
            return "consonant", (0.25, 0.0, 0.05, 0.0, 0.0)
    if ch in _BILABIAL:
        kind = "bilabial"
    elif ch in _LABIODENTAL:
        kind = "labiodental"
    elif ch in _VOWELS:
        kind = "vowel"
    else:
        kind = "consonant"
    return kind, _V[ch]


_ATTACH_NEXT = set("ˈˌ")  # stress marks: their time belongs to the syllable that follows


def _segments(phonemes: Iterable) -> list[_Segment]:
    segs: list[_Segment] = []
    pending: float | None = None  # start of stress marks waiting for their syllable
    for ph in sorted(phonemes, key=lambda p: float(p.start)):
        start, dur = float(ph.start), max(float(ph.duration), 0.0)
        kind, target = viseme(ph.symbol)
        if kind == "skip":
            sym = ph.symbol.strip()
            if sym and all(ch in _ATTACH_NEXT for ch in sym):
                pending = start if pending is None else pending
            elif sym and segs and start <= segs[-1].end + 0.02:  # length marks: the sound goes on
                segs[-1].end = max(segs[-1].end, start + dur)
            continue  # word gaps: left to coarticulation
        stressed = pending is not None
        if pending is not None:
            start, pending = min(start, pending), None
            dur = max(float(ph.start) + dur - start, 0.0)
        if segs and start - segs[-1].end > 0.12:  # a pause: the mouth rests
            segs.append(_Segment("silence", np.zeros(5), np.full(5, 0.8), segs[-1].end, start))
        t = np.array(target, dtype=np.float64)
        if stressed and kind == "vowel":  # stressed syllables open wider
            t[0] = min(t[0] * 1.15, 1.0)
        if kind == "vowel":
            dom = np.array([1.0, 1.0, 1.0, 0.6, 0.6])
        elif kind == "silence":
            dom = np.full(5, 0.8)
        elif kind in ("bilabial", "labiodental"):
            # The lips' closure is imposed by an envelope below; here only a weak pull on the jaw.
            dom = np.array([0.4, 0.3, 0.3, 0.05, 0.05])
        elif t[0] >= 0.35:  # h: takes the colour of the next vowel
            dom = np.full(5, 0.15)
        else:
            dom = np.array([0.5, 0.9 if t[1] > 0 else 0.3, 0.6 if t[2] > 0.2 else 0.3, 0.6, 0.4])
        segs.append(_Segment(kind, t, dom, start, start + dur))
    return segs


def phoneme_track(phonemes: Sequence, times: np.ndarray, *, audio: np.ndarray | None = None,
                  sample_rate: int | None = None, anticipation: float = 0.08, carry: float = 0.06,
                  loudness_mod: float = 0.5, rest: float = 0.1, lead: float = 0.03,
                  speech_close: float = 0.5, closure_width: float = 0.03) -> dict[str, np.ndarray]:
    """Mouth controls at ``times`` (seconds, same origin as the phonemes' ``start``).

    ``lead``: the mouth shapes run this much ahead of the phoneme timings (visible articulation leads
    the sound by a few tens of milliseconds).
    """
    times = np.asarray(times, dtype=np.float64)
    audio_times = times
    times = times + lead
    out = {name: np.zeros(len(times)) for name in MOUTH}
    segs = _segments(phonemes)
    if not segs or not len(times):
        return out
    starts = np.array([s.start for s in segs])
    ends = np.array([s.end for s in segs])
    targets = np.stack([s.target for s in segs])  # (N, 5)
    dom = np.stack([s.dominance for s in segs])
    values = np.zeros((len(times), 5))
    for i0 in range(0, len(times), 512):  # bounded memory for long inputs
        t = times[i0:i0 + 512, None]
        before = np.maximum(starts[None] - t, 0.0)
        after = np.maximum(t - ends[None], 0.0)
        d = np.exp(-before / anticipation - after / carry)  # (T, N)
        w = d[:, :, None] * dom[None]  # (T, N, 5)
        # Far from any segment (before the first / after the last) the mouth relaxes to rest.
        values[i0:i0 + 512] = (w * targets[None]).sum(1) / (w.sum(1) + rest)
    # Closures: m/b/p must really close, f/v must tuck the lower lip, whatever the neighbours say.
    def envelope(kinds: set[str], width: float) -> np.ndarray:
        env = np.zeros(len(times))
        for s in segs:
            if s.kind in kinds:
                dist = np.maximum(np.maximum(s.start - times, times - s.end), 0.0)
                env = np.maximum(env, np.exp(-(dist / width) ** 2))
        return env

    close = envelope({"bilabial"}, closure_width)
    tuck = envelope({"labiodental"}, closure_width)
    jaw, rnd, spr, up, low = (values[:, i] for i in range(5))
    if audio is not None and sample_rate and loudness_mod > 0 and np.abs(np.asarray(audio)).max() > 3:
        loud = loudness(audio, sample_rate, audio_times)
        jaw = jaw * (1 - loudness_mod + 1.25 * loudness_mod * loud)
    # While talking the lips stay nearer together than in a broad photographed smile: between syllables
    # and in short pauses the lower lip rises part of the way (no effect on a face with closed lips).
    spoken = [s for s in segs if s.kind != "silence"]
    if spoken and speech_close > 0:
        first, last = spoken[0].start, spoken[-1].end
        presence = _smoothstep((times - first + 0.12) / 0.12) * _smoothstep((last + 0.15 - times) / 0.15)
        low = low + speech_close * presence * (1 - np.clip(low, 0, 1))
    jaw = jaw * (1 - close)
    low = low * (1 - close) + close
    up = up * (1 - close)
    jaw = jaw * (1 - 0.7 * tuck) + 0.08 * tuck
    low = np.maximum(low, 0.6 * tuck)
    up = np.maximum(up, 0.35 * tuck)
    for name, arr in zip(MOUTH, (jaw, rnd, spr, up, low)):
        lo, hi = CONTROLS[name]
        out[name] = np.clip(arr, lo, hi)
    return out


# --------------------------------------------------------------------------------------------------
# Audio features

_HOP = 0.01  # analysis hop (s)
_WIN = 0.032  # analysis window (s)


def _frames(audio: np.ndarray, sample_rate: int, centers: np.ndarray, win: float) -> np.ndarray:
    x = np.asarray(audio)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    else:
        x = x.astype(np.float32)
    if x.ndim > 1:
        x = x.mean(axis=1)
    n = max(int(round(win * sample_rate)), 16)
    idx = np.round(centers * sample_rate).astype(np.int64)[:, None] - n // 2 + np.arange(n)[None]
    padded = np.concatenate([np.zeros(n, np.float32), x, np.zeros(n, np.float32)])
    idx = np.clip(idx + n, 0, len(padded) - 1)
    return padded[idx]


def rms_envelope(audio: np.ndarray, sample_rate: int, times: np.ndarray, win: float) -> np.ndarray:
    """Linear RMS (full scale = 1) of windows of ``win`` seconds centred at ``times``."""
    frames = _frames(audio, sample_rate, np.asarray(times, np.float64), win)
    return np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))


def _db_norm(db: np.ndarray, active: np.ndarray | None = None, span: float = 38.0) -> np.ndarray:
    ref_pool = db[active] if active is not None and active.any() else db
    ref = np.percentile(ref_pool, 95) if len(ref_pool) else 0.0
    ref = max(ref, -55.0)
    return np.clip((db - (ref - span)) / span, 0.0, 1.0)


def loudness(audio: np.ndarray, sample_rate: int, times: np.ndarray) -> np.ndarray:
    """0..1 loudness at ``times``: RMS in dB relative to the audio's loud (95th percentile) level."""
    grid = np.arange(0.0, max(len(audio) / sample_rate, _HOP), _HOP)
    rms = rms_envelope(audio, sample_rate, grid, _WIN)
    db = 20 * np.log10(rms + 1e-6)
    norm = _db_norm(db, db > -60)
    return np.interp(np.asarray(times, np.float64), grid, norm, left=0.0, right=0.0)


def _smooth_ar(x: np.ndarray, dt: float, attack: float, release: float) -> np.ndarray:
    """Attack/release one-pole smoothing, run forward then backward (zero phase)."""
    a_up, a_dn = 1 - math.exp(-dt / attack), 1 - math.exp(-dt / release)

    def run(v):
        y = np.empty_like(v)
        acc = v[0] if len(v) else 0.0
        for i, s in enumerate(v):
            acc += (a_up if s > acc else a_dn) * (s - acc)
            y[i] = acc
        return y

    if not len(x):
        return x
    return run(run(x)[::-1])[::-1]


def audio_track(audio: np.ndarray, sample_rate: int, times: np.ndarray, *,
                speech_close: float = 0.5) -> dict[str, np.ndarray]:
    """Mouth controls at ``times`` (seconds from the audio's start) from the audio alone."""
    times = np.asarray(times, np.float64)
    duration = len(audio) / sample_rate
    grid = np.arange(0.0, max(duration, _HOP) + _HOP, _HOP)
    frames = _frames(audio, sample_rate, grid, _WIN)
    frames = frames * np.hanning(frames.shape[1]).astype(np.float32)[None]
    nfft = 1 << int(math.ceil(math.log2(frames.shape[1])))
    spec = np.abs(np.fft.rfft(frames, n=nfft, axis=1)) ** 2
    freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    total = spec.sum(1) + 1e-12
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(1) / 0.375)  # Hann power correction
    db = 20 * np.log10(rms + 1e-6)
    loud = _db_norm(db, db > -60)
    centroid = (spec * freqs[None]).sum(1) / total
    high = spec[:, freqs >= 3500].sum(1) / total
    low = spec[:, freqs < 1000].sum(1) / total
    fric = np.clip((high - 0.30) / 0.35, 0, 1)
    voiced = np.clip((low - 0.35) / 0.35, 0, 1)
    jaw = 0.85 * loud ** 1.8 * (1 - 0.65 * fric)
    spread = 0.35 * fric * loud + 0.30 * np.clip((centroid - 1400) / 1500, 0, 1) * voiced * loud
    rnd = 0.55 * np.clip((800 - centroid) / 450, 0, 1) * voiced * loud
    up = 0.18 * fric * loud
    # Speech presence (loud within +-0.3 s): the lips rest nearer together while talking.
    active = (loud > 0.25).astype(np.float64)
    k = int(0.3 / _HOP)
    presence = np.convolve(active, np.ones(2 * k + 1), mode="same") > 0
    presence = _smooth_ar(presence.astype(np.float64), _HOP, 0.08, 0.08)
    low = speech_close * presence * (1 - np.clip(loud / 0.6, 0, 1))
    jaw = _smooth_ar(jaw, _HOP, 0.03, 0.07)
    spread = _smooth_ar(spread, _HOP, 0.05, 0.09)
    rnd = _smooth_ar(rnd, _HOP, 0.05, 0.09)
    up = _smooth_ar(up, _HOP, 0.04, 0.08)
    out = {}
    for name, arr in (("jaw_open", jaw), ("lip_round", rnd), ("lip_spread", spread), ("upper_lip", up),
                      ("lower_lip", low)):
        lo, hi = CONTROLS[name]
        out[name] = np.clip(np.interp(times, grid, arr, left=0.0, right=0.0), lo, hi)
    return out


def speech_track(audio: np.ndarray | None, sample_rate: int, phonemes: Sequence | None,
                 times: np.ndarray, **options) -> dict[str, np.ndarray]:
    """Phoneme-driven when phonemes are given (and not empty), else audio-driven."""
    if phonemes:
        return phoneme_track(phonemes, times, audio=audio, sample_rate=sample_rate, **options)
    if audio is None or not len(audio):
        return {name: np.zeros(len(times)) for name in MOUTH}
    return audio_track(audio, sample_rate, times, **{k: v for k, v in options.items() if k == "speech_close"})


def control_stream(audio: np.ndarray | None, sample_rate: int, phonemes: Sequence | None = None, *,
                   fps: float = 25.0, seed: int = 0, duration: float | None = None,
                   idle: bool = True) -> list[dict[str, float]]:
    """One control dict per video frame for a whole utterance (frame i shows time i / fps)."""
    if duration is None:
        duration = len(audio) / sample_rate if audio is not None else 0.0
    n = int(math.ceil(duration * fps - 1e-9))
    times = np.arange(n) / fps
    speech = speech_track(audio, sample_rate, phonemes, times)
    motion = IdleMotion(seed) if idle else None
    frames = []
    for i, t in enumerate(times):
        c = neutral()
        if motion is not None:
            c.update(motion.at(float(t)))
        for name in MOUTH:
            c[name] = float(speech[name][i])
        frames.append(c)
    return frames
