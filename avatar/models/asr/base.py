"""Speech recognition interface. A model is loaded once and shared by all sessions; it is stateless per
call, so streaming is done by the session calling ``transcribe`` on the growing utterance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Transcript:
    text: str
    language: str | None = None


class ASRModel(Protocol):
    sample_rate: int  # 16000

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> Transcript:
        """Transcribe float32 mono audio in [-1, 1] at ``sample_rate``. Thread-safe; blocking."""
