"""Test speech: espeak-ng says a sentence, we read it back as float32 mono at the rate asked for."""

from __future__ import annotations

import subprocess
import wave
from math import gcd
from pathlib import Path

import numpy as np


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono 16-bit WAV -> (float32 in [-1, 1], sample rate)."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2, "16-bit WAV expected"
        data = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())[:, 0]
        return data.astype(np.float32) / 32768.0, w.getframerate()


def resample(audio: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return audio.astype(np.float32)
    from scipy.signal import resample_poly

    g = gcd(src, dst)
    return resample_poly(audio, dst // g, src // g).astype(np.float32)


def espeak_wav(text: str, path: str | Path, rate: int = 16000, *, voice: str = "en-us", wpm: int = 160) -> np.ndarray:
    """Speak ``text`` with espeak-ng into ``path`` (a WAV at ``rate``) and return the samples."""
    raw = Path(str(path) + ".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw), text], check=True, capture_output=True)
    audio, src_rate = read_wav(raw)
    raw.unlink()
    audio = resample(audio, src_rate, rate)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return audio
