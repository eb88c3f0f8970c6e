"""Offline video: ``avatar render`` (a face speaking a text or a WAV to MP4) and ``avatar face add``."""

from __future__ import annotations

import re
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from avatar.errors import AvatarError, FaceError
from avatar.face.library import copy_photo, declare_voices, default_faces_dir
from avatar.face.prepare import IMAGE_SUFFIXES, PreparedFace, face_name_for, prepare_face

AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def _say(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    return progress or (lambda line: None)


# --------------------------------------------------------------------------------------------------
# MP4 writing


def render_mp4(face: PreparedFace, audio: np.ndarray, sample_rate: int, phonemes: Sequence | None,
               out_path: str | Path, fps: int = 25, *, seed: int = 0, crf: int = 20, quality_preset: str = "medium",
               progress: Callable[[str], None] | None = None) -> dict:
    """Write an MP4 (H.264 yuv420p video + AAC audio) of ``face`` speaking ``audio`` (int16 mono).

    Frame i shows timeline sample round(i * sample_rate / fps), so frames and audio share one clock; the
    video has ceil(duration * fps) frames and the container's duration is the audio's (to within one AAC
    frame of encoder padding, which the MP4 edit list hides). Returns a summary dict.
    """
    import av

    from avatar.face.animator import build_animator

    audio = np.asarray(audio)
    if audio.ndim > 1:
        audio = audio.reshape(-1) if audio.shape[-1] != 1 else audio[:, 0]
    if audio.dtype != np.int16:
        audio = np.clip(np.round(audio.astype(np.float64) * (32767 if np.abs(audio).max() <= 1.0 else 1)),
                        -32768, 32767).astype(np.int16)
    if not len(audio):
        raise AvatarError("nothing to render: the audio is empty")
    if sample_rate not in AAC_RATES:
        raise AvatarError(f"audio sample rate {sample_rate} Hz is not one AAC can store; use one of {AAC_RATES}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    animator = build_animator(face, fps=fps, sample_rate=sample_rate, seed=seed)
    animator.add_speech(0, audio, list(phonemes or []))
    positions = animator.frame_positions(len(audio))
    say = _say(progress)
    t0 = time.perf_counter()
    with av.open(str(out_path), mode="w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=Fraction(fps, 1))
        vstream.width = vstream.height = face.size
        vstream.pix_fmt = "yuv420p"
        vstream.time_base = Fraction(1, fps)
        vstream.options = {"crf": str(crf), "preset": quality_preset}
        astream = container.add_stream("aac", rate=sample_rate)
        astream.layout = "mono"
        astream.bit_rate = 96000
        astream.time_base = Fraction(1, sample_rate)
        # Audio first (the muxer interleaves by timestamp).
        step = 1024
        for start in range(0, len(audio), step):
            block = audio[start:start + step]
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)
        last = time.perf_counter()
        for i, position in enumerate(positions):
            image = animator.frame_at(position)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in vstream.encode(frame):
                container.mux(packet)
            if progress and time.perf_counter() - last > 2.0:
                last = time.perf_counter()
                say(f"  frame {i + 1}/{len(positions)}")
        for packet in vstream.encode(None):
            container.mux(packet)
    elapsed = time.perf_counter() - t0
    return {"path": str(out_path), "frames": len(positions), "fps": fps, "duration_s": len(audio) / sample_rate,
            "sample_rate": sample_rate, "render_s": round(elapsed, 2),
            "driven_by": "phonemes" if phonemes else "audio"}


# --------------------------------------------------------------------------------------------------
# Inputs


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode any audio file PyAV/FFmpeg reads to int16 mono at its own rate (48 kHz if AAC cannot store it)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"cannot read audio {path}: no such file")
    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio
            if not streams:
                raise AvatarError(f"cannot read audio {path}: it has no audio stream")
            rate = streams[0].rate or 22050
            rate = rate if rate in AAC_RATES else 48000
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            parts = []
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
    except AvatarError:
        raise
    except Exception as exc:  # PyAV raises many types for unreadable files
        raise AvatarError(f"cannot read audio {path}: {exc}") from None
    if not parts:
        raise AvatarError(f"cannot read audio {path}: it holds no samples")
    return np.concatenate(parts).astype(np.int16), int(rate)


def synthesize(tts, text: str) -> tuple[np.ndarray, int, list]:
    """All of ``text`` through a TTSModel: (int16 audio, rate, phonemes relative to the audio start)."""
    from avatar.models.tts.base import Phoneme

    audio, phonemes, offset = [], [], 0
    rate = int(tts.sample_rate)
    for chunk in tts.synthesize(text):
        a = np.asarray(chunk.audio, dtype=np.int16).reshape(-1)
        for p in chunk.phonemes or []:
            phonemes.append(Phoneme(p.symbol, p.start + offset / rate, p.duration))
        audio.append(a)
        offset += len(a)
    if not audio:
        raise AvatarError("the voice produced no audio for this text")
    return np.concatenate(audio), rate, phonemes


def find_face(name_or_path: str | Path, faces_dirs: Iterable[str | Path] | None, size: int,
              progress: Callable[[str], None] | None = None) -> PreparedFace:
    """A face by portrait path, or by name in ``faces_dirs`` (later folders win)."""
    say = _say(progress)
    path = Path(name_or_path)
    if path.suffix.lower() in IMAGE_SUFFIXES or path.is_file():
        if not path.is_file():
            raise FaceError(f"cannot read image {path}: no such file")
        say(f"face: preparing {path} (cached next to it once done)")
        return prepare_face(path, size=size)
    dirs = [Path(d) for d in (faces_dirs or [default_faces_dir()])]
    found = None
    known: set[str] = set()
    for folder in dirs:
        if folder.is_dir():
            for photo in sorted(folder.iterdir()):
                if photo.suffix.lower() in IMAGE_SUFFIXES and photo.is_file():
                    known.add(face_name_for(photo))
                    if face_name_for(photo) == str(name_or_path):
                        found = photo
    if found is None:
        raise FaceError(f"unknown face {str(name_or_path)!r}; known faces: {', '.join(sorted(known)) or '(none)'}; "
                        "or give a portrait's path")
    return prepare_face(found, str(name_or_path), size=size)


# --------------------------------------------------------------------------------------------------
# CLI entry points (argparse lives in avatar/cli.py)


def render_main(face_name_or_path: str, text: str | None = None, audio_path: str | None = None,
                out: str | Path = "avatar.mp4", tts=None, *, fps: int = 25, size: int = 512,
                faces_dirs: Sequence[str | Path] | None = None, seed: int = 0,
                progress: Callable[[str], None] | None = print) -> int:
    """``avatar render --face FACE (--text TEXT | --audio WAV) -o OUT.mp4``. Returns the exit code."""
    say = _say(progress)
    if (text is None) == (audio_path is None):
        raise AvatarError("give exactly one of a text or an audio file")
    face = find_face(face_name_or_path, faces_dirs, size, progress)
    if text is not None:
        if tts is None:
            raise AvatarError("rendering a text needs a voice (TTS model); pass --audio to lip-sync a WAV instead")
        t = time.perf_counter()
        audio, rate, phonemes = synthesize(tts, text)
        say(f"speech: {len(audio) / rate:.2f} s at {rate} Hz in {time.perf_counter() - t:.1f} s, "
            f"{len(phonemes)} timed phonemes" if phonemes else
            f"speech: {len(audio) / rate:.2f} s at {rate} Hz (no phoneme timings: lips follow the audio)")
    else:
        audio, rate = read_audio(audio_path)
        phonemes = []
        say(f"audio: {audio_path}: {len(audio) / rate:.2f} s at {rate} Hz (lips follow the audio)")
    summary = render_mp4(face, audio, rate, phonemes, out, fps=fps, seed=seed, progress=progress)
    say(f"wrote {summary['path']}: {summary['frames']} frames at {fps} fps, {summary['duration_s']:.2f} s, "
        f"face {face.name}, rendered in {summary['render_s']:.1f} s")
    return 0


_NAME_OK = re.compile(r"[^\w.-]+")


def face_add_main(photo: str | Path, name: str | None = None, *, faces_dir: str | Path, size: int = 512,
                  voices: Sequence[str] = (), progress: Callable[[str], None] | None = print) -> int:
    """``avatar face add PHOTO [--name NAME] [--voice VOICE ...]``: check and prepare the portrait, then keep a
    copy of it (and its cache) in ``faces_dir``, with the voices it speaks with (one per language, e.g.
    af_bella and zf_xiaobei). Nothing is copied when the photo cannot be used. Returns the exit code."""
    say = _say(progress)
    declared = _voices_by_language(voices)
    src = Path(photo)
    if not src.is_file():
        raise FaceError(f"cannot read image {src}: no such file")
    if src.suffix.lower() not in IMAGE_SUFFIXES:
        raise FaceError(f"cannot use {src}: give a PNG, JPEG, WebP or BMP portrait")
    name = name or _NAME_OK.sub("_", face_name_for(src)).strip("._") or "face"
    if not re.fullmatch(r"[\w][\w.-]*", name):
        raise FaceError(f"bad face name {name!r}: use letters, digits, '-', '_' or '.'")
    folder = Path(faces_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FaceError(f"cannot create the faces folder {folder}: {exc.strerror or exc}") from None
    for old in folder.glob(f"{name}.*"):
        if old.suffix.lower() in IMAGE_SUFFIXES and old.resolve() != src.resolve():
            say(f"replacing the existing face {name!r} ({old.name})")
            old.unlink()
    say(f"preparing {src} ...")
    t = time.perf_counter()
    face = prepare_face(src, name, out_dir=folder, size=size, use_cache=False)
    dest = copy_photo(src, folder, name)
    say(f"added face {name!r}: {dest} (landmarks, crop and motion fields cached in {face.cache_path}) "
        f"in {time.perf_counter() - t:.1f} s")
    if declared:
        path = declare_voices(folder, name, declared)
        say(f"face {name!r} speaks with {', '.join(f'{v} ({k})' for k, v in declared.items())} ({path})")
    return 0


def _voices_by_language(names: Sequence[str]) -> dict[str, str]:
    """--voice values by the language each speaks; an unknown name fails before the portrait is prepared."""
    from avatar.models.voices import describe_voice
    from avatar.models.weights import kokoro_voice

    out: dict[str, str] = {}
    for name in names:
        voice = describe_voice(name)
        if voice.backend == "kokoro":
            kokoro_voice(name)  # ConfigError listing the voices there
        elif voice.backend == "piper":
            from avatar.models.weights import piper_voice

            piper_voice(name)
        out[voice.language or "en"] = name
    return out


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a developer convenience
    import argparse

    p = argparse.ArgumentParser(prog="python -m avatar.face.offline", description="render a face to MP4")
    p.add_argument("--face", default="astronaut")
    p.add_argument("--audio", required=True)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    try:
        return render_main(args.face, audio_path=args.audio, out=args.output)
    except AvatarError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
