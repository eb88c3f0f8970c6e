"""Speech recognition with faster-whisper (CTranslate2), from model folders that pip packages ship."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar.config import ASRConfig
from avatar.errors import ConfigError, ModelMissingError
from avatar.language import Language
from avatar.models.asr.base import Transcript
from avatar.models.weights import whisper_dir

# Whisper writes Chinese in traditional or simplified characters at random unless its context shows
# which: a simplified sentence as the prompt makes it write simplified (measured on espeak-ng Mandarin:
# "我想買一件紅色的衣服多少錢" without, "我想买一件红色的衣服多少钱。" with).
PROMPTS = {"zh": "以下是普通话的句子。"}
WINDOW_MARGIN_S = 2  # an utterance goes through the short window when it ends this long before the window does


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
        self.window_s = cfg.window_s
        self._tokenizers: dict[str, object] = {}

    def _short_window(self, audio: np.ndarray, language: str) -> str | None:
        """The text of an utterance that fits ``window_s``, decoded from a window that long instead of
        Whisper's 30 s; None when the result looks degenerate (a repetition loop), so that the caller
        transcribes it the usual way.

        faster-whisper pads every input to 30 s, and the encoder's cost grows with the window, not the
        speech: a 2 s question took 290-470 ms on 30 s and 89-167 ms on 15 s, with the same words on the
        bench's six questions (tiny.en, 2 threads, 2-core AMD EPYC, 2026-12-02). Shorter windows made
        mistakes ("good work" for "good book" at 5 s) and loops."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        model = self.model
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            tokenizer = Tokenizer(model.hf_tokenizer, self.multilingual, task="transcribe", language=language)
            self._tokenizers[language] = tokenizer
        # The features of the speech, padded with zeros to the window, as faster-whisper pads them to 30 s.
        features = model.feature_extractor(audio)[:, :-1]
        features = np.pad(features, ((0, 0), (0, self.window_s * 100 - features.shape[-1])))  # 10 ms hop
        initial = PROMPTS.get(language) if self.multilingual else None
        previous = tokenizer.encode(" " + initial) if initial else []
        prompt = model.get_prompt(tokenizer, previous, without_timestamps=True)
        result = model.model.generate(
            model.encode(features), [prompt], beam_size=self.beam_size, max_length=model.max_length,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]))[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        # faster-whisper's own rule for silence: likely no speech, and not confidently decoded. Likely no
        # speech but decoded with some confidence is left to the 30 s window: on 2 s of digital silence
        # the short window said "you" (no-speech probability 0.99) where the 30 s window says nothing.
        if result.no_speech_prob > 0.6:
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            return "" if avg_logprob < -1.0 else None
        text = tokenizer.decode(tokens).strip()
        return None if get_compression_ratio(text) > 2.4 else text

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> Transcript:
        audio = np.asarray(audio, np.float32).reshape(-1)
        if audio.size < self.sample_rate // 10:
            return Transcript("", language)
        # Whisper knows languages by their primary code: "zh-CN" would be refused as no language at all.
        # None (persona.language = "") lets it detect the language.
        language = (Language.parse(language).code if language else None) if self.multilingual else "en"
        if language and self.window_s and audio.size <= (self.window_s - WINDOW_MARGIN_S) * self.sample_rate:
            text = self._short_window(audio, language)
            if text is not None:
                return Transcript(text, language)
        segments, info = self.model.transcribe(
            audio,
            language=language,
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
