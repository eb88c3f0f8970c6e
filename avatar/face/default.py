"""The default face: the public-domain NASA portrait of astronaut Eileen Collins (``skimage.data.astronaut()``).

``write_default_portrait(path)`` rebuilds ``faces/astronaut.png`` from scikit-image's copy: it crops the
512x512 original around the face the way ``prepare_face`` frames faces (eyes level, face about 38 % of the
width), scales it up with Lanczos filtering and a light unsharp mask, and writes a 512x512 PNG. The face in
the original is about 92 px wide, too small for ``prepare_face`` on its own; in the written crop it is
about 195 px wide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_FACE = "astronaut"


def astronaut_portrait(size: int = 512) -> np.ndarray:
    import cv2
    import skimage.data

    from avatar.face.photo import _pick_face, crop_transform, detect_landmarks

    original = np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1])
    points = _pick_face(detect_landmarks(original), "skimage.data.astronaut()")
    matrix = crop_transform(points, original.shape, size)
    crop = cv2.warpAffine(original, matrix, (size, size), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REPLICATE)
    blurred = cv2.GaussianBlur(crop, (0, 0), 1.2)
    return cv2.addWeighted(crop, 1.35, blurred, -0.35, 0)


def write_default_portrait(path: str | Path, size: int = 512) -> Path:
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), astronaut_portrait(size)):
        raise OSError(f"cannot write {path}")
    return path
