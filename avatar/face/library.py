"""The faces a server knows: portraits in folders, prepared on first use and cached."""

from __future__ import annotations

import hashlib
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


def copy_photo(photo: Path, dest_dir: Path, name: str) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}{photo.suffix.lower()}"
    if photo.resolve() != dest.resolve():
        shutil.copyfile(photo, dest)
    return dest

