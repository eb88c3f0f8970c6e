"""Test media for the face tests: speech audio, timed phonemes and a held-out portrait, all installed locally."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FACES = REPO / "faces"
SENTENCES = [
    "Hello there. My name is Ava, and I am happy to meet you today.",
    "The quick brown fox jumps over the lazy dog, but the sleepy cat just watches.",
]


def espeak_speech(text: str, tmp: Path | None = None) -> tuple[np.ndarray, int] | None:
    """(int16 mono audio, rate) spoken by espeak-ng, or None when espeak-ng is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    folder = Path(tmp or tempfile.mkdtemp(prefix="face-test-"))
    path = folder / "speech.wav"
    subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True, timeout=60)
    with wave.open(str(path)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).copy()
        return audio, w.getframerate()


@functools.lru_cache(maxsize=1)
def piper_tts():
    """The project's default TTS (Piper with phoneme timings), or None when it is not installed."""
    try:
        from avatar.config import PersonaConfig, TTSConfig
        from avatar.models.loading import load_tts

        return load_tts(TTSConfig(backend="piper"), PersonaConfig())
    except Exception:  # missing voice package, onnxruntime, ... : the test using it is skipped
        return None


@functools.lru_cache(maxsize=4)
def piper_speech(text: str):
    """(int16 audio, rate, phonemes) from Piper, or None."""
    tts = piper_tts()
    if tts is None:
        return None
    from avatar.face.offline import synthesize

    audio, rate, phonemes = synthesize(tts, text)
    return (audio, rate, phonemes) if phonemes else None


def heldout_portrait() -> Path | None:
    """A front-facing portrait that is NOT the default face: Grace Hopper (U.S. Navy photo, public domain),
    which matplotlib ships as sample data (``matplotlib.cbook.get_sample_data('grace_hopper.jpg')``)."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    except Exception:
        return None
    return path if path.is_file() else None


def dark_pixels(frame: np.ndarray, box: tuple[int, int, int, int], level: int = 60) -> int:
    x0, y0, x1, y1 = box
    return int((frame[y0:y1, x0:x1].max(axis=2) < level).sum())
