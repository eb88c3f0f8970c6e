"""The faces a server knows: portraits in folders, prepared on first use and cached."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from avatar.config import REPO_ROOT
from avatar.errors import FaceError
from avatar.face.prepare import (CACHE_SUFFIX, CACHE_VERSION, IMAGE_SUFFIXES, PreparedFace, _cache_path,
                                 _fallback_cache_dir, _sha256, face_name_for, prepare_face)

# --------------------------------------------------------------------------------------------------
# Library of faces


def default_faces_dir() -> Path:
    """The package's faces folder (the repository's ``faces/``)."""
    return REPO_ROOT / "faces"


class FaceLibrary:
    """All portraits found in ``dirs`` (later folders override earlier ones with the same name).

    Faces without a valid cache are prepared at construction, with a progress line each; a photo that
    cannot be used is skipped with a line saying why (see ``errors``).
    """

    def __init__(self, dirs: Iterable[str | Path], size: int = 512,
                 progress: Callable[[str], None] | None = print):
        self.size = size
        self.dirs = [Path(d) for d in dirs]
        self.errors: dict[str, str] = {}
        self._faces: dict[str, PreparedFace] = {}
        say = progress or (lambda line: None)
        photos: dict[str, Path] = {}
        for folder in self.dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith("."):
                    photos[face_name_for(path)] = path
        for name, photo in photos.items():
            try:
                face = prepare_face(photo, name, size=size, use_cache=True) if self._cached(photo, name) else None
                if face is None:
                    say(f"face {name}: preparing {photo} ...")
                    face = prepare_face(photo, name, size=size)
                    say(f"face {name}: ready (cache {face.cache_path})")
                self._faces[name] = face
            except FaceError as exc:
                self.errors[name] = exc.message
                say(f"face {name}: skipped: {exc.message}")

    def _cached(self, photo: Path, name: str) -> bool:
        cache = _cache_path(photo, name, None, self.size)
        fallback = _fallback_cache_dir() / f"{name}-{hashlib.sha1(str(photo.resolve()).encode()).hexdigest()[:8]}{CACHE_SUFFIX}"
        for candidate in (cache, fallback):
            if candidate.is_file():
                try:
                    with np.load(candidate, allow_pickle=False) as data:
                        if (int(data["version"]) == CACHE_VERSION and int(data["size"]) == self.size
                                and str(data["sha256"]) == _sha256(photo)):
                            return True
                except (OSError, KeyError, ValueError, EOFError):
                    pass
        return False

    @property
    def names(self) -> list[str]:
        return sorted(self._faces)

    def get(self, name: str) -> PreparedFace:
        try:
            return self._faces[name]
        except KeyError:
            known = ", ".join(self.names) or "(none)"
            raise FaceError(f"unknown face {name!r}; known faces: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._faces

    def __len__(self) -> int:
        return len(self._faces)


VOICE_SUFFIX = ".json"


def voice_file(folder: Path, name: str) -> Path:
    """Where a face declares its voice: ``NAME.json`` beside the portrait, ``{"voice": {"en": "af_heart"}}``."""
    return Path(folder) / f"{name}{VOICE_SUFFIX}"


def face_voices(dirs: Iterable[str | Path]) -> dict[str, dict[str, str]]:
    """Each face's declared voices by language (later folders win, as for the portraits). A file that cannot
    be read is reported by the caller's voice choice as an undeclared face, never fatal."""
    found: dict[str, dict[str, str]] = {}
    for folder in map(Path, dirs):
        for path in sorted(folder.glob(f"*{VOICE_SUFFIX}")) if folder.is_dir() else []:
            try:
                voices = json.loads(path.read_text("utf-8")).get("voice", {})
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(voices, dict):
                found[path.name[: -len(VOICE_SUFFIX)]] = {str(k): str(v) for k, v in voices.items()}
    return found


def declare_voices(folder: Path, name: str, voices: dict[str, str]) -> Path:
    """Write (or update) face ``name``'s voices, keeping the languages not given."""
    path = voice_file(folder, name)
    current = face_voices([folder]).get(name, {})
    path.write_text(json.dumps({"voice": {**current, **voices}}, ensure_ascii=False) + "\n", "utf-8")
    return path


def copy_photo(photo: Path, dest_dir: Path, name: str) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}{photo.suffix.lower()}"
    if photo.resolve() != dest.resolve():
        shutil.copyfile(photo, dest)
    return dest

