"""Face preparation: detect the face mesh once, crop and align, and cache what rendering needs.

``prepare_face(photo)`` runs MediaPipe's face mesh (478 points with iris refinement) on a portrait, checks
that it holds exactly one large enough face, crops and aligns a square around it (eyes level, face about
38 % of the frame width) and precomputes, for every animation control, a smooth backward displacement
field (``output pixel -> source pixel offset``) over the moving part of the image. The fields come from
sparse landmark motions (jaw rotation about the ear axis, lip and brow moves, head parallax from the
mesh depth) interpolated with thin-plate splines and limited to a feathered head region, so pixels
outside it never move. Everything is stored next to the photo as ``NAME.face.npz`` with the photo's
sha256; a changed photo (or a newer cache format) is prepared again.

The steps live in their own modules: photo.py (reading, the face mesh, the aligned crop), fields.py (the
displacement fields), library.py (the faces a server knows). MediaPipe is imported only in photo.py,
lazily: a face with a valid cache renders without it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatar.errors import FaceError
from avatar.face import landmarks as lm
from avatar.face.fields import GLOBAL_CONTROLS, GRID_STEP, SHARED_CONTROLS, SPLIT_CONTROLS, compute_fields
from avatar.face.photo import (EYE_LINE, FACE_FRACTION, _pick_face, crop_transform, detect_landmarks, face_width,
                               read_image, warp_photo)

__all__ = ["CACHE_SUFFIX", "CACHE_VERSION", "EYE_LINE", "FACE_FRACTION", "GLOBAL_CONTROLS", "GRID_STEP",
           "IMAGE_SUFFIXES", "MIN_FACE_PX", "PreparedFace", "SHARED_CONTROLS", "SPLIT_CONTROLS", "face_name_for",
           "load_cache", "prepare_face", "save_cache"]

CACHE_VERSION = 5
CACHE_SUFFIX = ".face.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_FACE_PX = 120  # face width in the photo below which the mouth would be mush once scaled up


@dataclass
class PreparedFace:
    """An aligned portrait and the cached data its renderer needs (see the module doc)."""

    name: str
    photo: Path | None
    size: int
    image: np.ndarray  # BGR uint8 (size, size, 3): the aligned crop
    landmarks: np.ndarray  # (478, 3) float32: x, y in crop pixels, z in pixels (smaller = nearer)
    transform: np.ndarray  # (2, 3) float64: photo pixel -> crop pixel
    roi: tuple[int, int, int, int]  # x0, y0, x1, y1: the only region that ever changes
    grid_step: int
    # name -> (field above the mouth line, field below it); shared fields use the same array twice.
    # Each field is (gh, gw, 2) float32 on the coarse grid x0 + (step-1)/2 + i*step (same in y): source offset.
    bases: dict[str, tuple[np.ndarray, np.ndarray]]
    sha256: str = ""
    cache_path: Path | None = None
    mask: np.ndarray | None = None  # (gh, gw) float32 on the coarse grid: 1 where the head moves, 0 where held
    _shared: dict = field(default_factory=dict, repr=False)  # per-face render data shared by renderers

    def __repr__(self) -> str:
        return f"PreparedFace({self.name!r}, size={self.size}, roi={self.roi})"


# --------------------------------------------------------------------------------------------------
# Cache


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def face_name_for(photo: str | Path) -> str:
    return Path(photo).name.split(".")[0]


def _cache_path(photo: Path, name: str, out_dir: Path | None, size: int = 512) -> Path:
    # Another frame size has its own file, so a run at 256 px (the livestream test) never overwrites the
    # 512 px cache shipped next to the photo.
    sized = "" if size == 512 else f".{size}px"
    return (out_dir or photo.parent) / f"{name}{sized}{CACHE_SUFFIX}"


def _fallback_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "avatar" / "faces"


def save_cache(face: PreparedFace, path: Path) -> None:
    arrays = {
        "version": np.array(CACHE_VERSION), "sha256": np.array(face.sha256), "name": np.array(face.name),
        "size": np.array(face.size), "landmarks": face.landmarks.astype(np.float32),
        "transform": face.transform.astype(np.float64), "roi": np.array(face.roi, np.int32),
        "grid_step": np.array(face.grid_step),
    }
    if face.mask is not None:
        arrays["mask"] = face.mask.astype(np.float16)
    for key, (up, low) in face.bases.items():
        arrays[f"U:{key}"] = up.astype(np.float16)
        if low is not up:
            arrays[f"L:{key}"] = low.astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_cache(path: Path, photo: Path | None, size: int, *, sha256: str | None = None,
               image: np.ndarray | None = None) -> PreparedFace | None:
    """The cached face, or None if the cache is missing, stale or for another size. Never imports MediaPipe."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != CACHE_VERSION or int(data["size"]) != size:
                return None
            digest = str(data["sha256"])
            if photo is not None and digest != (sha256 or _sha256(photo)):
                return None
            bases = {}
            for key in data.files:
                if key.startswith("U:"):
                    name = key[2:]
                    up = data[key].astype(np.float32)
                    low = data[f"L:{name}"].astype(np.float32) if f"L:{name}" in data.files else up
                    bases[name] = (up, low)
            face = PreparedFace(
                name=str(data["name"]), photo=photo, size=size, image=None,  # type: ignore[arg-type]
                landmarks=data["landmarks"].astype(np.float32), transform=data["transform"].astype(np.float64),
                roi=tuple(int(v) for v in data["roi"]), grid_step=int(data["grid_step"]), bases=bases,
                sha256=digest, cache_path=path,
                mask=data["mask"].astype(np.float32) if "mask" in data.files else None)
    except (OSError, KeyError, ValueError, EOFError):
        return None
    if image is None:
        if photo is None:
            return None
        image = warp_photo(read_image(photo), face.transform, size)
    face.image = image
    return face


def prepare_face(photo_path: str | Path, name: str | None = None, out_dir: str | Path | None = None, *,
                 size: int = 512, use_cache: bool = True) -> PreparedFace:
    """Prepare a portrait (or load its valid cache). Raises FaceError naming the problem.

    The cache goes to ``out_dir`` (default: next to the photo) as ``NAME.face.npz``; when that folder is not
    writable it goes to ``~/.cache/avatar/faces``.
    """
    photo = Path(photo_path)
    if not photo.is_file():
        raise FaceError(f"cannot read image {photo}: no such file")
    name = name or face_name_for(photo)
    if not re.fullmatch(r"[\w][\w.-]*", name):
        raise FaceError(f"bad face name {name!r}: use letters, digits, '-', '_' or '.'")
    out = Path(out_dir) if out_dir is not None else None
    cache = _cache_path(photo, name, out, size)
    fallback = _fallback_cache_dir() / f"{name}-{hashlib.sha1(str(photo.resolve()).encode()).hexdigest()[:8]}{CACHE_SUFFIX}"
    image = read_image(photo)
    digest = _sha256(photo)
    if use_cache:
        for candidate in (cache, fallback):
            if candidate.is_file():
                face = load_cache(candidate, photo, size, sha256=digest, image=None)
                if face is not None:
                    face.name = name
                    return face

    faces = detect_landmarks(image)
    points = _pick_face(faces, str(photo))
    width = face_width(points)
    if width < MIN_FACE_PX:
        raise FaceError(f"the face in {photo} is only {width:.0f} px wide; it needs at least {MIN_FACE_PX} px: "
                        "use a larger photo or one taken closer")
    matrix = crop_transform(points, image.shape, size)
    aligned = warp_photo(image, matrix, size)
    again = detect_landmarks(aligned)
    if not again:
        raise FaceError(f"the face in {photo} was lost after cropping; use a front-facing portrait")
    # The face we aligned is the one nearest the crop's centre.
    center = np.array([size / 2, EYE_LINE * size])
    marks = min(again, key=lambda f: np.linalg.norm(f[[lm.LEFT_IRIS_CENTER, lm.RIGHT_IRIS_CENTER], :2].mean(0) - center))
    roi, step, bases, mask = compute_fields(marks, size)
    face = PreparedFace(name=name, photo=photo, size=size, image=aligned, landmarks=marks.astype(np.float32),
                        transform=matrix, roi=roi, grid_step=step, bases=bases, sha256=digest, mask=mask)
    for candidate in (cache, fallback):
        try:
            save_cache(face, candidate)
            face.cache_path = candidate
            break
        except OSError:
            continue
    return face


