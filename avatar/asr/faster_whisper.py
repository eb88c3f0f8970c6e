"""Speech recognition with faster-whisper (CTranslate2), from model folders that pip packages ship."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar.asr.base import Transcript
from avatar.config import ASRConfig
from avatar.errors import ConfigError, ModelMissingError
from avatar.weights import whisper_dir


# Whisper writes Chinese in traditional or simplified characters at random unless its context shows
# which: a simplified sentence as the prompt makes it write simplified (measured on espeak-ng Mandarin:
# "我想買一件紅色的衣服多少錢" without, "我想买一件红色的衣服多少钱。" with).
PROMPTS = {"zh": "以下是普通话的句子。"}


def resolve_device(device: str) -> str:
    if device in ("cpu", "cuda"):
        return device
    if device == "auto":
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    raise ConfigError(f"asr.device must be 'cpu', 'cuda' or 'auto', got '{device}'")


class FasterWhisperASR:
    """Thread-safe: CTranslate2 queues concurrent ``generate`` calls, and feature extraction is stateless."""

    sample_rate = 16000

    def __init__(self, cfg: ASRConfig):
        from faster_whisper import WhisperModel

        self.model_dir = whisper_dir(cfg.model)
        # A folder without these files would make faster-whisper fetch a tokenizer from the hub.
        needed = ("model.bin", "config.json", "tokenizer.json")
        if missing := [n for n in needed if not (Path(self.model_dir) / n).is_file()]:
            raise ModelMissingError(f"{self.model_dir} is no CTranslate2 Whisper model: no {', '.join(missing)}")
        self.device = resolve_device(cfg.device)
        self.compute_type = cfg.compute_type
        self.beam_size = cfg.beam_size
        try:
            self.model = WhisperModel(
                str(self.model_dir), device=self.device, compute_type=cfg.compute_type,
                cpu_threads=cfg.cpu_threads, local_files_only=True,
            )
        except (RuntimeError, ValueError) as exc:
            if "compute type" in str(exc) or "CUDA" in str(exc):
                raise ConfigError(f"faster-whisper cannot run {cfg.compute_type} on {self.device}: {exc}") from None
            raise ModelMissingError(f"cannot load Whisper model from {self.model_dir}: {exc}") from None
        self.multilingual = self.model.model.is_multilingual

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> Transcript:
        audio = np.asarray(audio, np.float32).reshape(-1)
        if audio.size < self.sample_rate // 10:
            return Transcript("", language)
        segments, info = self.model.transcribe(
            audio,
            language=language if self.multilingual else "en",
            beam_size=self.beam_size,
            # Partial results re-run this on a growing utterance: every fallback pass or context carry-over
            # would add latency for little gain on a few seconds of speech.
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            initial_prompt=PROMPTS.get(language or "") if self.multilingual else None,
        )
        text = "".join(s.text for s in segments).strip()
        return Transcript(text, info.language)
