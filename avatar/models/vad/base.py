"""Voice activity detection: the model interface and the end-pointing logic built on it.

A ``VADModel`` is loaded once and shared; each session gets its own ``VADStream`` (the model's recurrent
state) and its own ``Endpointer`` (the speech/silence decisions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from avatar.config import EndpointerConfig


class VADStream(Protocol):
    def probability(self, frame: np.ndarray) -> float:
        """Speech probability of one frame of ``frame_samples`` float32 samples in [-1, 1]."""

    def reset(self) -> None: ...


class VADModel(Protocol):
    sample_rate: int  # 16000
    frame_samples: int  # samples per call to VADStream.probability (512 for Silero at 16 kHz)

    def new_stream(self) -> VADStream: ...


@dataclass
class VADEvent:
    kind: str  # "speech_start" | "pause" | "resume" | "speech_end"
    sample: int  # position in the session's input stream, at the VAD sample rate


class Endpointer:
    """Turns per-frame speech probabilities into speech start / end decisions.

    ``pause`` is emitted at the first silent frame after speech (a possible end of the turn) so the
    session can start work speculatively; ``resume`` if speech comes back before ``end_silence_ms``;
    ``speech_end`` when the silence has lasted ``end_silence_ms``.
    """

    def __init__(self, config: EndpointerConfig, sample_rate: int, frame_samples: int):
        self.config = config
        self.frame_ms = 1000.0 * frame_samples / sample_rate
        self.frame_samples = frame_samples
        self.in_speech = False
        self.paused = False
        self._speech_run = 0
        self._silence_run = 0
        self.position = 0  # samples seen so far
        self.speech_start_sample = 0
        self.last_speech_sample = 0

    @property
    def silence_ms(self) -> float:
        """How long the current pause has lasted (0 when not paused)."""
        return self._silence_run * self.frame_ms if self.paused else 0.0

    def end_now(self) -> VADEvent:
        """End the utterance in the current pause (the silence lasted, or an end-of-turn model decided): the
        ``speech_end`` event."""
        self.in_speech = self.paused = False
        self._speech_run = self._silence_run = 0
        return VADEvent("speech_end", self.last_speech_sample)

    def reset(self) -> None:
        self.in_speech = self.paused = False
        self._speech_run = self._silence_run = 0

    def update(self, prob: float, *, agent_speaking: bool = False) -> list[VADEvent]:
        cfg = self.config
        self.position += self.frame_samples
        events: list[VADEvent] = []
        if not self.in_speech:
            threshold = cfg.barge_in_threshold if agent_speaking else cfg.threshold
            needed = cfg.barge_in_min_speech_ms if agent_speaking else cfg.min_speech_ms
            if prob >= threshold:
                self._speech_run += 1
                if self._speech_run * self.frame_ms >= needed:
                    self.in_speech = True
                    self.paused = False
                    self._silence_run = 0
                    self.speech_start_sample = self.position - self._speech_run * self.frame_samples
                    self.last_speech_sample = self.position
                    events.append(VADEvent("speech_start", self.speech_start_sample))
            else:
                self._speech_run = 0
            return events
        # Hysteresis: once in speech, a lower probability still counts as speech.
        if prob >= cfg.threshold - 0.15:
            self.last_speech_sample = self.position
            if self.paused:
                self.paused = False
                events.append(VADEvent("resume", self.position))
            self._silence_run = 0
            return events
        self._silence_run += 1
        if not self.paused:
            self.paused = True
            events.append(VADEvent("pause", self.last_speech_sample))
        if self._silence_run * self.frame_ms >= cfg.end_silence_ms:
            events.append(self.end_now())
        return events
