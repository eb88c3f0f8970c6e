"""Speech synthesis interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np


@dataclass
class Phoneme:
    symbol: str  # IPA symbol as the TTS spoke it
    start: float  # seconds from the start of the chunk
    duration: float  # seconds


@dataclass
class SpeechChunk:
    audio: np.ndarray  # int16 mono at the model's sample_rate
    text: str  # the text this chunk speaks
    phonemes: list[Phoneme] = field(default_factory=list)  # empty when the backend has no timings


class TTSModel(Protocol):
    sample_rate: int

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[SpeechChunk]:
        """Yield audio chunks (about one per sentence) as they are made. Blocking; thread-safe.
        ``voice``: another voice of the same model (Kokoro's); backends with one voice use theirs."""
