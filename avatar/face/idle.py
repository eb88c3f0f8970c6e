"""Idle life: blinks, slow head motion and breathing, so a face that is not speaking still looks alive."""

from __future__ import annotations

import bisect
import math

import numpy as np

# The idle motion repeats after this long, so that a resting face shows the same few hundred frames over
# and over: they are rendered once and shared by every session with that face (FaceAnimator.jpeg_at).
# 30 s of head sway, breathing and 5-15 blinks do not read as a loop.
LOOP_S = 30.0


class IdleMotion:
    """Blinks, slow head motion and breathing as a pure function of time (seconds) and the seed, periodic
    with ``period`` seconds."""

    def __init__(self, seed: int = 0, *, blink_interval: tuple[float, float] = (2.0, 6.0),
                 head_amplitude: float = 1.0, period: float = LOOP_S):
        rng = np.random.default_rng(seed)
        blink_rng = np.random.default_rng(rng.integers(1 << 62))
        self.period = float(period)
        # Blink starts within one period; the last one ends before the period does, so the loop is seamless.
        lo, hi = blink_interval
        self._blinks: list[float] = []
        at = float(blink_rng.uniform(0.8, hi))
        while at < self.period - 0.6:
            self._blinks.append(at)
            if blink_rng.random() < 0.12 and at + 0.32 < self.period - 0.6:  # a double blink now and then
                at += 0.32
                self._blinks.append(at)
            at += float(blink_rng.uniform(lo, hi))
        # (amplitude in degrees, frequency Hz, phase) per axis: a few slow sinusoids, each a whole number of
        # cycles per period.
        self._head = {}
        for axis, amp in (("head_yaw", 1.6), ("head_pitch", 1.0), ("head_roll", 0.7)):
            freqs = np.maximum(1, np.round(rng.uniform(0.03, 0.22, size=3) * self.period)) / self.period
            phases = rng.uniform(0, 2 * np.pi, size=3)
            amps = amp * head_amplitude * np.array([1.0, 0.6, 0.35]) / 1.2
            self._head[axis] = (amps, freqs, phases)
        self._breath_period = self.period / max(1, round(self.period / float(rng.uniform(3.8, 4.6))))
        self._breath_phase = float(rng.uniform(0, 2 * np.pi))

    @staticmethod
    def _blink_shape(dt: np.ndarray) -> np.ndarray:
        close, hold, open_ = 0.06, 0.025, 0.09
        out = np.zeros_like(dt)
        a = (dt >= 0) & (dt < close)
        out[a] = np.sin(0.5 * np.pi * dt[a] / close) ** 2
        out[(dt >= close) & (dt < close + hold)] = 1.0
        c = (dt >= close + hold) & (dt < close + hold + open_)
        out[c] = np.cos(0.5 * np.pi * (dt[c] - close - hold) / open_) ** 2
        return out

    def blink(self, t: float) -> float:
        t = t % self.period
        i = bisect.bisect_right(self._blinks, t)
        recent = np.array(self._blinks[max(0, i - 2):i], dtype=np.float64)
        return float(self._blink_shape(t - recent).max()) if len(recent) else 0.0

    def at(self, t: float) -> dict[str, float]:
        t = t % self.period
        out = {}
        for axis, (amps, freqs, phases) in self._head.items():
            out[axis] = float((amps * np.sin(2 * np.pi * freqs * t + phases)).sum())
        out["breath"] = float(0.5 - 0.5 * math.cos(2 * math.pi * t / self._breath_period + self._breath_phase))
        b = self.blink(t)
        out["blink_left"] = b
        out["blink_right"] = b
        return out
