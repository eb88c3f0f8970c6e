"""Load the pipeline's models once per process, choosing each backend from the config."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from avatar.asr.base import ASRModel
from avatar.config import ASRConfig, Config, LLMConfig, PersonaConfig, TTSConfig
from avatar.errors import ConfigError
from avatar.llm.base import ChatLLM
from avatar.tts.base import TTSModel
from avatar.vad.base import VADModel

ASR_BACKENDS = ("faster-whisper",)
LLM_BACKENDS = ("llama-cpp", "transformers", "openai")
TTS_BACKENDS = ("piper",)


@dataclass
class Models:
    vad: VADModel
    asr: ASRModel
    llm: ChatLLM
    tts: TTSModel


def _check(kind: str, backend: str, valid: tuple[str, ...]) -> None:
    if backend not in valid:
        raise ConfigError(f"unknown {kind} backend '{backend}'; valid: {', '.join(valid)}")


def load_vad() -> VADModel:
    from avatar.vad.silero import SileroVAD

    return SileroVAD()


def load_asr(cfg: ASRConfig) -> ASRModel:
    _check("asr", cfg.backend, ASR_BACKENDS)
    from avatar.asr.faster_whisper import FasterWhisperASR

    return FasterWhisperASR(cfg)


def load_llm(cfg: LLMConfig) -> ChatLLM:
    _check("llm", cfg.backend, LLM_BACKENDS)
    if cfg.backend == "llama-cpp":
        from avatar.llm.llama_cpp import LlamaCppLLM

        return LlamaCppLLM(cfg)
    if cfg.backend == "transformers":
        from avatar.llm.transformers_backend import TransformersLLM

        return TransformersLLM(cfg)
    from avatar.llm.openai_http import OpenAIHTTPLLM

    return OpenAIHTTPLLM(cfg)


def load_tts(cfg: TTSConfig, persona: PersonaConfig) -> TTSModel:
    _check("tts", cfg.backend, TTS_BACKENDS)
    from avatar.tts.piper import PiperTTS

    return PiperTTS(cfg, persona)


def _describe_llm(cfg: LLMConfig) -> str:
    if cfg.backend == "openai":
        return f"{cfg.model} at {cfg.url}"
    if cfg.backend == "transformers":
        return f"{cfg.model} ({cfg.device})"
    return f"{cfg.model} ({cfg.n_threads} threads)"


def load_models(config: Config, *, progress: Callable[[str], None] = lambda line: None) -> Models:
    def timed(what: str, load):
        started = time.perf_counter()
        model = load()
        progress(f"loading {what}... {time.perf_counter() - started:.1f} s")
        return model

    a, l, t = config.asr, config.llm, config.tts
    # Check every backend name first, so a typo fails before minutes of loading.
    _check("asr", a.backend, ASR_BACKENDS)
    _check("llm", l.backend, LLM_BACKENDS)
    _check("tts", t.backend, TTS_BACKENDS)
    return Models(
        vad=timed("VAD silero", load_vad),
        asr=timed(f"ASR {a.backend} {a.model} ({a.device}, {a.compute_type})", lambda: load_asr(a)),
        llm=timed(f"LLM {l.backend} {_describe_llm(l)}", lambda: load_llm(l)),
        tts=timed(f"TTS {t.backend} {t.voice or config.persona.voice}", lambda: load_tts(t, config.persona)),
    )
