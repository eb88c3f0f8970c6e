"""Small sample-level helpers shared by the client and the server, and the microphone's sample rate."""

from __future__ import annotations

import numpy as np

INPUT_SAMPLE_RATE = 16000  # microphone audio, as the client sends it and the recogniser wants it


def resample_linear(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Mono audio from ``src_rate`` to ``dst_rate`` by linear interpolation, as float32. Fine for speech
    going to the recogniser; not a high-quality resampler."""
    audio = np.asarray(audio, np.float32)
    if src_rate == dst_rate or not len(audio):
        return audio
    n = int(round(len(audio) * dst_rate / src_rate))
    return np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(np.float32)
