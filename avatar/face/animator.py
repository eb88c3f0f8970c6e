"""Per-session face animation on the output timeline.

The server places reply audio on one timeline counted in samples at the TTS output rate (docs/protocol.md);
``FaceAnimator`` keeps the speech placed on that timeline and turns any position into controls, a frame
or a JPEG. Speech for a position is always added before the frame for that position is asked for, and
frames come in increasing position order, roughly in real time.

Cost per frame: interpolating a few precomputed 100 Hz control tracks, the idle motion, one render and
one JPEG encode. The speech tracks are computed once per chunk in ``add_speech``.
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from avatar.face.controls import CONTROLS, MOUTH, IdleMotion, loudness, neutral, speech_track
from avatar.face.prepare import PreparedFace
from avatar.face.renderer import Renderer, create_renderer

TRACK_HOP = 0.01  # seconds between samples of a speech track
LEAD = 0.15  # the mouth may start moving this long before the chunk's audio (anticipation)
TAIL = 0.30  # and settles this long after it
RELEASE = 0.025  # time constant of the mouth closing after clear_speech (s)
CHANNELS = MOUTH + ("brow", "head_pitch")
# How far a control may move before a frame looks different from the last one sent (see ``unchanged``):
# at most about a quarter of a pixel at the edge of a 512x512 face. Angles are in degrees.
# Measured on the astronaut: a resting face then skips about half its frames, and a skipped frame differs
# from the one shown by no more than two consecutive frames at 25 fps do.
STILL_TOLERANCE = {name: 0.015 for name in CONTROLS} | {"breath": 0.05, "head_yaw": 0.06, "head_pitch": 0.06,
                                                        "head_roll": 0.06}
STILL_MAX_AGE_S = 1.0  # even a still face gets a fresh frame this often


@dataclass
class _Speech:
    start: int  # first audio sample on the timeline
    end: int  # one past the last audio sample
    t0: float  # timeline time (s) of track sample 0
    values: np.ndarray  # (T, len(CHANNELS))
    cut: int | None = None  # clear_speech position, if any

    @property
    def track_end(self) -> float:
        return self.t0 + (len(self.values) - 1) * TRACK_HOP


class FaceAnimator:
    """Controls, frames and JPEGs for positions on one session's output timeline. Thread-safe."""

    def __init__(self, face: PreparedFace, *, fps: int = 25, sample_rate: int = 22050, seed: int = 0,
                 quality: int = 80, renderer: Renderer | None = None, idle: bool = True,
                 speech_options: dict | None = None):
        self.face = face
        self.fps = fps
        self.sample_rate = int(sample_rate)
        self.quality = int(quality)
        self.renderer = renderer if renderer is not None else create_renderer(face)
        self._idle = IdleMotion(seed) if idle else None
        self._seed = seed
        self._speech_options = dict(speech_options or {})
        self._speech: list[_Speech] = []
        self._lock = threading.Lock()
        self._last_jpeg: tuple[int, bytes] | None = None
        self._last_controls: tuple[int, dict[str, float]] | None = None  # of the last frame rendered

    # -- speech on the timeline -------------------------------------------------------------------
    def add_speech(self, position: int, chunk_audio: np.ndarray, phonemes: Sequence | None = None) -> None:
        """Place a speech chunk at timeline sample ``position``; ``phonemes`` are relative to the chunk
        start (empty or None: the mouth follows the audio alone)."""
        audio = np.asarray(chunk_audio)
        if audio.ndim > 1:
            audio = audio.reshape(-1)
        n = len(audio)
        if n == 0:
            return
        sr = self.sample_rate
        times = np.arange(-LEAD, n / sr + TAIL + TRACK_HOP / 2, TRACK_HOP)
        track = speech_track(audio, sr, list(phonemes or []), times, **self._speech_options)
        # A little life while talking: brows lift and the head dips slightly on loud syllables.
        loud = loudness(audio, sr, times)
        k = np.ones(25) / 25  # 0.25 s
        slow = np.convolve(loud, k, mode="same")
        emphasis = np.clip(loud - slow - 0.1, 0, None)
        brow = np.clip(np.convolve(emphasis, np.ones(15) / 15, mode="same") * 1.2, 0, 0.35)
        nod = np.convolve(loud, np.ones(35) / 35, mode="same") * 0.9
        values = np.stack([track[name] for name in MOUTH] + [brow, nod], axis=1)
        seg = _Speech(int(position), int(position) + n, int(position) / sr - LEAD, values)
        with self._lock:
            starts = [s.start for s in self._speech]
            self._speech.insert(bisect.bisect_right(starts, seg.start), seg)

    def clear_speech(self, from_position: int) -> None:
        """Barge-in: drop speech at and after ``from_position``; the mouth closes at once from there."""
        p = int(from_position)
        with self._lock:
            kept = []
            for seg in self._speech:
                if seg.start >= p:
                    continue
                if seg.end > p or (seg.track_end * self.sample_rate > p):
                    seg.cut = p if seg.cut is None else min(seg.cut, p)
                kept.append(seg)
            self._speech = kept
            self._last_jpeg = None

    def forget_speech_before(self, position: int) -> None:
        """Drop speech whose track ended before ``position`` (a show that runs for hours keeps its per-frame
        work and memory flat)."""
        with self._lock:
            self._speech = [s for s in self._speech if s.track_end * self.sample_rate >= position]

    def is_speaking(self, position: int) -> bool:
        with self._lock:
            return any(s.start <= position < (s.end if s.cut is None else min(s.end, s.cut)) for s in self._speech)

    # -- per frame --------------------------------------------------------------------------------
    def _speech_at(self, position: int) -> np.ndarray:
        t = position / self.sample_rate
        out = np.zeros(len(CHANNELS))
        with self._lock:
            # Forget speech that ended well before the frames being asked for.
            while self._speech and self._speech[0].track_end < t - 2.0:
                self._speech.pop(0)
            segs = list(self._speech)
        for seg in segs:
            if t < seg.t0 or t > seg.track_end:
                continue
            x = (t - seg.t0) / TRACK_HOP
            i = min(int(x), len(seg.values) - 2)
            f = x - i
            v = seg.values[i] * (1 - f) + seg.values[i + 1] * f
            if seg.cut is not None and position >= seg.cut:
                v = v * math.exp(-(position - seg.cut) / self.sample_rate / RELEASE)
            out += v
        return out

    def controls_at(self, position: int, speech: np.ndarray | None = None) -> dict[str, float]:
        """The control dict (see avatar.face.controls) for the frame shown at timeline sample ``position``
        (``speech``: ``_speech_at(position)`` when the caller has it already)."""
        t = position / self.sample_rate
        c = neutral()
        if self._idle is not None:
            c.update(self._idle.at(t))
        v = self._speech_at(position) if speech is None else speech
        for i, name in enumerate(CHANNELS):
            c[name] = c.get(name, 0.0) + float(v[i])
        for name, value in c.items():
            lo, hi = CONTROLS[name]
            c[name] = min(max(value, lo), hi)
        return c

    def frame_at(self, position: int) -> np.ndarray:
        """The BGR frame (size x size) shown at timeline sample ``position``."""
        controls = self.controls_at(position)
        self._last_controls = (position, controls)
        return self.renderer.render(controls)

    def unchanged(self, position: int) -> bool:
        """True when the frame at ``position`` would look like the last frame rendered, so the client can
        keep showing that one. A resting face moves slowly (head sway, breathing): skipping its
        near-identical frames frees the CPU for the frames that carry speech and blinks."""
        last = self._last_controls
        if last is None or not 0 <= position - last[0] < STILL_MAX_AGE_S * self.sample_rate:
            return False
        now = self.controls_at(position)
        return all(abs(now[name] - last[1][name]) <= tol for name, tol in STILL_TOLERANCE.items())

    def jpeg_at(self, position: int) -> bytes:
        """``frame_at`` encoded as JPEG (quality ``quality``).

        A resting frame (no speech on the face) comes from the face's shared cache when any session has
        rendered that point of the idle loop before: the idle motion repeats every ``IdleMotion.period``,
        so a face at rest has a few hundred distinct frames, whatever the number of sessions. Four
        sessions rendering their resting faces took a quarter of the 2-core machine and made four people
        talking at once wait 3.7-5.1 s (p95) for a reply against 2.6 s with video off (issue 10,
        BENCHMARKS.md)."""
        import cv2

        last = self._last_jpeg
        if last is not None and last[0] == position:
            return last[1]
        speech = self._speech_at(position)
        controls = self.controls_at(position, speech)
        self._last_controls = (position, controls)
        key = self._resting_key(position, speech)
        cache = self._resting_jpegs
        data = cache.get(key) if key is not None else None
        if data is None:
            frame = self.renderer.render(controls)
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:  # pragma: no cover - cv2 always encodes a valid uint8 image
                raise RuntimeError("JPEG encoding failed")
            data = buf.tobytes()
            if key is not None:
                cache[key] = data
        self._last_jpeg = (position, data)
        return data

    def _resting_key(self, position: int, speech: np.ndarray) -> int | None:
        """The frame's place in the idle loop when the face is at rest there (``speech``, its speech
        controls, all zero) and the position is on the frame grid (``fps`` frames a second from timeline
        sample 0); None otherwise."""
        idle = self._idle
        if idle is None:
            return None
        frame = position * self.fps / self.sample_rate
        index = round(frame)
        if abs(frame - index) > 0.01 or np.any(speech):
            return None
        return index % round(idle.period * self.fps)

    @property
    def _resting_jpegs(self) -> dict[int, bytes]:
        """Resting frames of this face, idle seed, size and quality, shared by every animator of the face
        (a 30 s loop at 25 fps: at most 750 JPEGs, ~26 MB at 512x512)."""
        shared = self.face.__dict__.setdefault("_resting_jpegs", {})
        key = (self._seed, self.fps, self.quality, self.face.size, type(self.renderer).__name__)
        return shared.setdefault(key, {})

    def frame_positions(self, n_samples: int, start: int = 0) -> list[int]:
        """Timeline positions of the frames covering ``n_samples`` from ``start`` (frame i at i/fps)."""
        n = int(math.ceil(n_samples * self.fps / self.sample_rate - 1e-9))
        return [start + int(round(i * self.sample_rate / self.fps)) for i in range(n)]


def build_animator(face, *, sample_rate: int, video=None, fps: int | None = None, seed: int = 0,
                   speech_options: dict | None = None, faults: Sequence = ()):
    """A ``FaceAnimator`` for a prepared ``face``: frame rate and JPEG quality from ``video``
    (avatar.config.VideoConfig) unless ``fps`` is given; ``faults`` (test-only fault injection) wrap it."""
    from avatar import faults as fault_injection

    options = {"quality": video.quality} if video is not None else {}
    animator = FaceAnimator(face, fps=fps or (video.fps if video is not None else 25), sample_rate=sample_rate,
                            seed=seed, speech_options=speech_options, **options)
    return fault_injection.wrap_animator(animator, list(faults)) if faults else animator
