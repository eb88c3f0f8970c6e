"""Lip-sync check: does the rendered mouth open when the voice is loud, and at the same time?

``lipsync_check`` renders speech with a ``FaceAnimator`` (phoneme-driven, or audio-driven when no phonemes
are given), then measures the mouth frame by frame with an INDEPENDENT MediaPipe face-mesh pass on the
rendered frames (tracking mode, its own instance): the inner-lip opening (mean of three central inner-lip
landmark pairs) divided by the face height. It correlates that with the audio's loudness envelope (RMS of
a one-frame window centred on each frame's time) and reports Pearson r at the best lag within +-5 frames,
the lag itself (positive: the mouth lags the voice) and r at lag 0.

For scale: in natural speech the correlation between mouth opening and the acoustic envelope is moderate
(about 0.3-0.6 across talkers and measures), so r >= 0.6 with |lag| <= 2 frames (80 ms at 25 fps, about
the audio-visual asynchrony people stop noticing) is a demanding gate for a synthetic face.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from avatar.face import landmarks as lm
from avatar.face.controls import rms_envelope

_PAIRS = [(82, 87), (13, 14), (312, 317)]  # inner upper / inner lower lip, centre and either side


@dataclass
class LipSyncResult:
    r: float  # Pearson r at the best lag
    lag: int  # frames; positive = the mouth moves after the voice
    r0: float  # Pearson r at lag 0
    frames: int
    detected: int  # frames where the independent pass found the face
    opening: np.ndarray = field(repr=False)
    loudness: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        return {"r": round(self.r, 3), "lag_frames": self.lag, "r_lag0": round(self.r0, 3),
                "frames": self.frames, "detected": self.detected}


class MouthMeter:
    """Independent MediaPipe face mesh in tracking mode, measuring the mouth opening of video frames."""

    def __init__(self):
        os.environ.setdefault("GLOG_minloglevel", "2")
        from mediapipe.python.solutions import face_mesh

        self._mesh = face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=True, max_num_faces=1,
                                        min_detection_confidence=0.5, min_tracking_confidence=0.5)
        self._lock = threading.Lock()

    def measure(self, frame_bgr: np.ndarray) -> float:
        """Inner-lip opening / face height, or NaN when no face is found."""
        import cv2

        h, w = frame_bgr.shape[:2]
        with self._lock:
            result = self._mesh.process(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        if not result.multi_face_landmarks:
            return float("nan")
        p = result.multi_face_landmarks[0].landmark
        xy = lambda i: np.array([p[i].x * w, p[i].y * h])  # noqa: E731
        gap = np.mean([np.linalg.norm(xy(a) - xy(b)) for a, b in _PAIRS])
        height = np.linalg.norm(xy(lm.FOREHEAD_TOP) - xy(lm.CHIN))
        return float(gap / max(height, 1e-6))

    def close(self) -> None:
        self._mesh.close()


def frame_loudness(audio: np.ndarray, sample_rate: int, n_frames: int, fps: float) -> np.ndarray:
    """RMS (full scale 1) of a one-frame window centred on each frame's time i / fps."""
    times = np.arange(n_frames) / fps
    return rms_envelope(audio, sample_rate, times, 1.0 / fps)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def correlate(opening: np.ndarray, loud: np.ndarray, max_lag: int = 5) -> tuple[float, int, float]:
    """(best r, its lag, r at lag 0); lag k pairs opening[t] with loud[t - k]."""
    n = min(len(opening), len(loud))
    opening, loud = np.asarray(opening[:n], float), np.asarray(loud[:n], float)
    best, best_lag = -2.0, 0
    for k in range(-max_lag, max_lag + 1):
        if k >= 0:
            r = _pearson(opening[k:], loud[:n - k])
        else:
            r = _pearson(opening[:n + k], loud[-k:])
        if np.isfinite(r) and (r > best + 1e-9 or (abs(r - best) <= 1e-9 and abs(k) < abs(best_lag))):
            best, best_lag = r, k
    return best, best_lag, _pearson(opening, loud)


def measure_frames(frames: Iterable[np.ndarray], meter: MouthMeter | None = None) -> np.ndarray:
    own = meter is None
    meter = meter or MouthMeter()
    try:
        return np.array([meter.measure(f) for f in frames], dtype=np.float64)
    finally:
        if own:
            meter.close()


def lipsync_check(face, audio: np.ndarray, sample_rate: int, phonemes: Sequence | None = None, *,
                  fps: int = 25, seed: int = 0, max_lag: int = 5, lead_s: float = 0.4,
                  meter: MouthMeter | None = None, speech_options: dict | None = None) -> LipSyncResult:
    """Render ``audio`` (int16 mono) on ``face`` and measure how well the mouth follows it.

    The speech starts ``lead_s`` into the clip and the clip ends ``lead_s`` after it, so the measure
    also sees the mouth at rest before and after.
    """
    from avatar.face.animator import build_animator

    audio = np.asarray(audio).reshape(-1)
    lead = int(round(lead_s * sample_rate))
    padded = np.concatenate([np.zeros(lead, np.int16), audio.astype(np.int16), np.zeros(lead, np.int16)])
    animator = build_animator(face, fps=fps, sample_rate=sample_rate, seed=seed, speech_options=speech_options)
    animator.add_speech(lead, audio, phonemes or [])
    positions = animator.frame_positions(len(padded))
    opening = measure_frames((animator.frame_at(p) for p in positions), meter)
    loud = frame_loudness(padded, sample_rate, len(positions), fps)
    r, lag, r0 = correlate(opening, loud, max_lag)
    return LipSyncResult(r=r, lag=lag, r0=r0, frames=len(positions), detected=int(np.isfinite(opening).sum()),
                         opening=opening, loudness=loud)
