"""Load the pipeline's models once per process, choosing each backend from the config."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from avatar.asr.base import ASRModel
import dataclasses
import logging

from avatar.config import ASRConfig, Config, LLMConfig, PersonaConfig, TTSConfig
from avatar.errors import ConfigError
from avatar.llm.base import ChatLLM
from avatar.tts.base import TTSModel
from avatar.vad.base import VADModel

ASR_BACKENDS = ("faster-whisper",)
LLM_BACKENDS = ("xllamacpp", "transformers", "openai")
# Old names still accepted in configs, with a warning: llama-cpp-python left the install (its native build
# crashes on AMX CPUs); the same GGUF models run on xllamacpp.
LLM_ALIASES = {"llama-cpp": "xllamacpp"}
log = logging.getLogger(__name__)
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


def resolve_llm(cfg: LLMConfig, progress: Callable[[str], None] = lambda line: None) -> LLMConfig:
    """``cfg`` with an old backend name replaced and ``model = "auto"`` turned into a tier for this machine."""
    if cfg.backend in LLM_ALIASES:
        new = LLM_ALIASES[cfg.backend]
        log.warning("llm.backend '%s' is deprecated; using '%s' (set llm.backend = \"%s\")", cfg.backend, new, new)
        progress(f"WARNING: llm.backend '{cfg.backend}' is deprecated; using '{new}'")
        cfg = dataclasses.replace(cfg, backend=new)
    _check("llm", cfg.backend, LLM_BACKENDS)
    if cfg.model == "auto" and cfg.backend != "openai":
        from avatar.tiers import pick_llm_tier

        model, reason = pick_llm_tier(device=cfg.device)
        progress(f"LLM tier: {model} ({reason}; set llm.model to choose another)")
        cfg = dataclasses.replace(cfg, model=model)
    return cfg


def load_llm(cfg: LLMConfig) -> ChatLLM:
    cfg = resolve_llm(cfg)
    if cfg.backend == "xllamacpp":
        from avatar.llm.xllamacpp_backend import XLlamaCppLLM

        return XLlamaCppLLM(cfg)
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
    return f"{cfg.model} ({cfg.device}, {cfg.n_threads} threads, {cfg.slots} slots)"


def load_models(config: Config, *, progress: Callable[[str], None] = lambda line: None) -> Models:
    def timed(what: str, load):
        started = time.perf_counter()
        model = load()
        progress(f"loading {what}... {time.perf_counter() - started:.1f} s")
        return model

    a, t = config.asr, config.tts
    # Check every backend name first, so a typo fails before minutes of loading.
    _check("asr", a.backend, ASR_BACKENDS)
    l = resolve_llm(config.llm, progress)
    _check("tts", t.backend, TTS_BACKENDS)
    return Models(
        vad=timed("VAD silero", load_vad),
        asr=timed(f"ASR {a.backend} {a.model} ({a.device}, {a.compute_type})", lambda: load_asr(a)),
        llm=timed(f"LLM {l.backend} {_describe_llm(l)}", lambda: load_llm(l)),
        tts=timed(f"TTS {t.backend} {t.voice or config.persona.voice}", lambda: load_tts(t, config.persona)),
    )
