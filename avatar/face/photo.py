"""Reading a portrait and finding its face: the image, MediaPipe's face mesh, the aligned crop."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np

from avatar.errors import FaceError
from avatar.face import landmarks as lm

FACE_FRACTION = 0.38  # face width / frame width in the aligned crop
EYE_LINE = 0.40  # height of the eye line in the crop, as a fraction from the top
# --------------------------------------------------------------------------------------------------
# Image reading and landmark detection


def read_image(path: str | Path) -> np.ndarray:
    """Read a photo as BGR uint8 (EXIF orientation applied). Raises FaceError if it cannot be read."""
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise FaceError(f"cannot read image {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise FaceError(f"cannot read image {path}: it is not a PNG, JPEG, WebP or BMP picture, or it is damaged")
    return image


_mesh_lock = threading.Lock()
_mesh = None


def detect_landmarks(image_bgr: np.ndarray, max_faces: int = 5) -> list[np.ndarray]:
    """All faces MediaPipe finds: a list of (478, 3) float32 arrays in pixels (z scaled like x)."""
    global _mesh
    import cv2

    with _mesh_lock:
        if _mesh is None:
            os.environ.setdefault("GLOG_minloglevel", "2")
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            try:
                from mediapipe.python.solutions import face_mesh
            except ImportError as exc:
                raise FaceError(
                    f"preparing a face needs MediaPipe (pip install 'mediapipe==0.10.21'): {exc}"
                ) from None
            _mesh = face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=max_faces,
                                       min_detection_confidence=0.5)
        h, w = image_bgr.shape[:2]
        result = _mesh.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
    faces = []
    for marks in result.multi_face_landmarks or []:
        pts = np.array([(p.x * w, p.y * h, p.z * w) for p in marks.landmark], dtype=np.float32)
        if len(pts) == lm.N_LANDMARKS:
            faces.append(pts)
    return faces


def face_width(points: np.ndarray) -> float:
    oval = points[lm.FACE_OVAL, :2]
    return float(oval[:, 0].max() - oval[:, 0].min())


# --------------------------------------------------------------------------------------------------
# Crop and alignment


def crop_transform(points: np.ndarray, photo_shape: tuple[int, int], size: int) -> np.ndarray:
    """Similarity transform (2x3) from the photo to a square, eyes-level crop of ``size`` pixels."""
    right_eye = points[lm.RIGHT_IRIS_CENTER, :2].astype(np.float64)  # image left
    left_eye = points[lm.LEFT_IRIS_CENTER, :2].astype(np.float64)
    angle = math.atan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])
    ca, sa = math.cos(-angle), math.sin(-angle)
    rot = np.array([[ca, -sa], [sa, ca]])
    eyes = (left_eye + right_eye) / 2
    upright = (points[:, :2] - eyes) @ rot.T  # landmarks with level eyes, origin between the eyes
    oval = upright[lm.FACE_OVAL]
    width = float(oval[:, 0].max() - oval[:, 0].min())
    center_x = float(oval[:, 0].max() + oval[:, 0].min()) / 2
    side = width / FACE_FRACTION
    # Shrink the crop (zoom in) while it reaches past the photo, down to a face of 60 % of the frame.
    h, w = photo_shape[:2]
    for _ in range(12):
        corners_up = np.array([[center_x - side / 2, -EYE_LINE * side], [center_x + side / 2, -EYE_LINE * side],
                               [center_x - side / 2, (1 - EYE_LINE) * side], [center_x + side / 2, (1 - EYE_LINE) * side]])
        corners = corners_up @ rot + eyes  # inverse rotation
        inside = (corners[:, 0].min() >= -0.5 and corners[:, 1].min() >= -0.5
                  and corners[:, 0].max() <= w - 0.5 and corners[:, 1].max() <= h - 0.5)
        if inside or side <= width / 0.6:
            break
        side = max(side * 0.93, width / 0.6)
    scale = size / side
    # photo -> crop: translate eyes to origin, rotate, scale, move to the crop's eye point.
    a = scale * rot
    target = np.array([size / 2 - center_x * scale, EYE_LINE * size])
    t = target - a @ eyes
    matrix = np.hstack([a, t[:, None]])
    # A photo that already is such a crop is used as it is (no resampling blur).
    if photo_shape[0] == size and photo_shape[1] == size:
        if abs(scale - 1) < 0.08 and abs(angle) < math.radians(1.0) and np.abs(t).max() < 0.05 * size:
            matrix = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    return matrix


def warp_photo(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if np.allclose(matrix, [[1, 0, 0], [0, 1, 0]]) and image.shape[:2] == (size, size):
        return image.copy()
    scale = math.hypot(matrix[0, 0], matrix[0, 1])
    interp = cv2.INTER_AREA if scale < 0.8 else (cv2.INTER_CUBIC if scale < 1.2 else cv2.INTER_LANCZOS4)
    if scale < 0.8:  # pre-shrink to avoid aliasing, then a mild warp
        return _warp_downscaled(image, matrix, size)
    return cv2.warpAffine(image, matrix, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)


def _warp_downscaled(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    import cv2

    scale = math.hypot(matrix[0, 0], matrix[0, 1])
    factor = scale * 1.1  # shrink to slightly above the final scale with area averaging
    small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    m = matrix.copy()
    m[:, :2] /= factor
    return cv2.warpAffine(small, m, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def _pick_face(faces: list[np.ndarray], where: str) -> np.ndarray:
    if not faces:
        raise FaceError(f"no face found in {where}: use a sharp, well-lit, front-facing portrait with the whole "
                        "face visible")
    widths = [face_width(f) for f in faces]
    order = np.argsort(widths)[::-1]
    big = [i for i in order if widths[i] >= 0.5 * widths[order[0]]]
    if len(big) > 1:
        raise FaceError(f"found {len(big)} faces in {where}: crop the photo so that it shows one person")
    return faces[order[0]]


