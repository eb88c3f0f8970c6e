"""Speech synthesis with Piper (VITS on onnxruntime), with per-phoneme timings for lip sync."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from avatar.config import PersonaConfig, TTSConfig
from avatar.errors import ModelMissingError
from avatar.language import Language
from avatar.models.tts import zh_text
from avatar.models.tts.base import Phoneme, SpeechChunk
from avatar.models.weights import cache_dir, piper_voice

log = logging.getLogger(__name__)

# Split after sentence punctuation followed by a space (so "3.5" stays whole); CJK punctuation needs none.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|(?<=[。！？；])|\n+")
_SKIP = {"^", "$"}  # Piper's begin/end markers: they take time but are no phoneme the face should show


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def aligned_model(source: Path) -> tuple[Path, bool]:
    """The voice with its per-phoneme duration tensor exposed as an output, and whether that worked.

    piper-tts[alignment] patches the graph with ``onnx`` at every load (~1 s); the patched copy is kept
    in the avatar cache so later starts load it directly. The installed voice is never modified.
    """
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / "piper" / f"{source.stem}.{key}.aligned.onnx"
    if cached.is_file():
        return cached, True
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output
    except ImportError:
        log.warning("no phoneme timings for %s: pip install onnx (piper-tts[alignment]) to get them", source.name)
        return source, False
    model = onnx.load(str(source))
    try:
        add_alignment_output(model)
    except ValueError as exc:  # already patched, or a graph without the duration tensor
        already = "already" in str(exc)
        if not already:
            log.warning("no phoneme timings for %s: %s", source.name, exc)
        return source, already
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=cached.parent)
        os.close(fd)
        onnx.save(model, tmp)
        os.replace(tmp, cached)
    except OSError as exc:
        log.warning("cannot cache the aligned voice in %s (%s); it is patched at every start", cached.parent, exc)
        return source, False
    return cached, True


def _check_g2pw(voice: Path) -> None:
    """Piper's pinyin voices (newer zh_CN ones) need the g2pW model, which Piper downloads on first use.
    avatar downloads nothing at run time: say where the files go instead of failing later, offline."""
    folder = cache_dir() / "piper" / "g2pW"
    if not (folder / "g2pw.onnx").is_file():
        raise ModelMissingError(
            f"voice {voice.name} reads Chinese through pinyin with the g2pW model, which is not in {folder}. "
            f"Fix: unpack g2pW (g2pw.onnx and its files) into that folder, or use a Chinese Piper voice whose "
            f".onnx.json says \"espeak\": {{\"voice\": \"cmn\"}} (e.g. zh_CN-huayan-medium), or leave the "
            f"voice unset for espeak-ng Mandarin")


class PiperTTS:
    """Thread-safe: Piper guards its phonemizer with a lock and onnxruntime sessions allow concurrent runs."""

    def __init__(self, cfg: TTSConfig, persona: PersonaConfig):
        import onnxruntime
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        self.voice_path = piper_voice(cfg.voice or persona.voice or "joe-medium")
        model_path, self.has_timings = aligned_model(self.voice_path)
        try:
            config = PiperConfig.from_dict(json.loads(Path(f"{self.voice_path}.json").read_text("utf-8")))
            opts = onnxruntime.SessionOptions()
            opts.log_severity_level = 3
            # Every sentence length is a new input shape, and onnxruntime keeps a memory plan per shape
            # seen: with patterns on, every 60 new sentences added 60-80 MB; without, memory stays flat.
            opts.enable_mem_pattern = False
            session = onnxruntime.InferenceSession(
                str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # bad JSON, or onnxruntime's untyped load errors
            raise ModelMissingError(f"cannot load Piper voice {self.voice_path}: {exc}") from None
        # Built directly: PiperVoice.load(include_alignments=True) would patch the graph again at every start.
        self.voice = PiperVoice(session=session, config=config, download_dir=cache_dir() / "piper")
        self.sample_rate = config.sample_rate
        # A Chinese voice reads digits its own way; numbers and dates are written out first (zh_text).
        # The voice's espeak_voice is a language tag ("cmn", "zh", "en-us").
        self.chinese = Language.parse(config.espeak_voice).is_chinese or config.phoneme_type.value == "pinyin"
        if config.phoneme_type.value == "pinyin":
            _check_g2pw(self.voice_path)
        self._syn = SynthesisConfig(length_scale=cfg.length_scale)

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[SpeechChunk]:
        for sentence in split_sentences(text):
            spoken = zh_text.normalize(sentence) if self.chinese else sentence
            audio, phonemes, offset = [], [], 0
            # Piper may split a sentence further; joining keeps one chunk per sentence of ours, with its text.
            for part in self.voice.synthesize(spoken, self._syn, include_alignments=self.has_timings):
                audio.append(part.audio_int16_array)
                t = offset
                for a in part.phoneme_alignments or []:
                    if a.phoneme not in _SKIP and a.num_samples > 0:
                        phonemes.append(Phoneme(a.phoneme, t / self.sample_rate, a.num_samples / self.sample_rate))
                    t += a.num_samples
                offset += len(part.audio_int16_array)
            if audio:
                yield SpeechChunk(np.concatenate(audio), sentence, phonemes)
