"""Face preparation: detect the face mesh once, crop and align, and cache what rendering needs.

``prepare_face(photo)`` runs MediaPipe's face mesh (478 points with iris refinement) on a portrait, checks
that it holds exactly one large enough face, crops and aligns a square around it (eyes level, face about
38 % of the frame width) and precomputes, for every animation control, a smooth backward displacement
field (``output pixel -> source pixel offset``) over the moving part of the image. The fields come from
sparse landmark motions (jaw rotation about the ear axis, lip and brow moves, head parallax from the
mesh depth) interpolated with thin-plate splines and limited to a feathered head region, so pixels
outside it never move. Everything is stored next to the photo as ``NAME.face.npz`` with the photo's
sha256; a changed photo (or a newer cache format) is prepared again.

MediaPipe is imported only here, lazily: a face with a valid cache renders without it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from avatar.errors import FaceError
from avatar.face import landmarks as lm

CACHE_VERSION = 5
CACHE_SUFFIX = ".face.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_FACE_PX = 120  # face width in the photo below which the mouth would be mush once scaled up
FACE_FRACTION = 0.38  # face width / frame width in the aligned crop
EYE_LINE = 0.40  # height of the eye line in the crop, as a fraction from the top
GRID_STEP = 4  # pixels between samples of the cached displacement fields

# Controls whose fields differ above and below the mouth line ("U" for the part above, "L" below).
SPLIT_CONTROLS = ("jaw_open", "upper_lip", "lower_lip+", "lower_lip-", "lip_round")
SHARED_CONTROLS = ("lip_spread", "brow+", "brow-")
GLOBAL_CONTROLS = ("head_yaw", "head_pitch", "head_roll", "breath")  # head pose: applied after the expression


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


# --------------------------------------------------------------------------------------------------
# Geometry shared by the field builder


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


@dataclass
class _Geometry:
    pts: np.ndarray  # (478, 2)
    z: np.ndarray  # (478,)
    mouth_w: float
    iod: float
    face_w: float
    face_h: float
    mouth_c: np.ndarray
    upper_lip: np.ndarray  # bool (478,)
    lower_lip: np.ndarray
    below: np.ndarray  # signed distance below the mouth line (px), (478,)
    s: np.ndarray  # |x - mouth centre| / half mouth width, (478,)
    in_span: np.ndarray  # bool: between the mouth corners
    rest_gap: Callable[[np.ndarray], np.ndarray]  # inner-lip gap at rest as a function of x
    head_c: np.ndarray
    head_axes: np.ndarray
    feather: float = 0.45

    def head_radius(self, xy: np.ndarray) -> np.ndarray:
        d = (xy - self.head_c) / self.head_axes
        return np.sqrt((d ** 2).sum(-1))

    def head_mask(self, xy: np.ndarray) -> np.ndarray:
        r = self.head_radius(xy)
        return 1.0 - _smoothstep((r - 1.0) / self.feather)


def _polyline_y(xs: np.ndarray, ys: np.ndarray, x: np.ndarray) -> np.ndarray:
    order = np.argsort(xs)
    return np.interp(x, xs[order], ys[order])


def _points_between(pts: np.ndarray, top: list[int], bottom: list[int], tol: float) -> np.ndarray:
    """Points whose x lies within the polylines' span and y between them (inclusive of tol)."""
    x = pts[:, 0]
    top_y = _polyline_y(pts[top, 0], pts[top, 1], x)
    bot_y = _polyline_y(pts[bottom, 0], pts[bottom, 1], x)
    lo, hi = pts[top, 0].min(), pts[top, 0].max()
    return (x >= lo) & (x <= hi) & (pts[:, 1] >= top_y - tol) & (pts[:, 1] <= bot_y + tol)


def _geometry(points: np.ndarray) -> _Geometry:
    pts = points[:, :2].astype(np.float64)
    z = points[:, 2].astype(np.float64)
    c_l, c_r = pts[lm.MOUTH_CORNERS[0]], pts[lm.MOUTH_CORNERS[1]]
    mouth_w = float(np.linalg.norm(c_r - c_l))
    iod = float(np.linalg.norm(pts[lm.LEFT_IRIS_CENTER] - pts[lm.RIGHT_IRIS_CENTER]))
    oval = pts[lm.FACE_OVAL]
    face_w = float(oval[:, 0].max() - oval[:, 0].min())
    face_h = float(pts[lm.CHIN, 1] - pts[lm.FOREHEAD_TOP, 1])
    mouth_c = (c_l + c_r) / 2
    tol = 0.6
    upper = _points_between(pts, lm.LIPS_OUTER_UPPER, lm.LIPS_INNER_UPPER, tol)
    lower = _points_between(pts, lm.LIPS_INNER_LOWER, lm.LIPS_OUTER_LOWER, tol)
    upper[lm.LIPS_OUTER_UPPER + lm.LIPS_INNER_UPPER] = True
    lower[lm.LIPS_OUTER_LOWER + lm.LIPS_INNER_LOWER] = True
    corners = list(lm.MOUTH_CORNERS) + list(lm.INNER_CORNERS)
    upper[corners] = False
    lower[corners] = False
    # Mouth line: midline of the inner lips between the corners, then on to the jaw pivots.
    iu, il = pts[lm.LIPS_INNER_UPPER], pts[lm.LIPS_INNER_LOWER]
    mid = (iu + il) / 2
    piv_l, piv_r = pts[lm.JAW_LINE_ENDS[0]], pts[lm.JAW_LINE_ENDS[1]]
    line = np.vstack([piv_l, c_l, mid, c_r, piv_r])
    below = pts[:, 1] - _polyline_y(line[:, 0], line[:, 1], pts[:, 0])
    s = np.abs(pts[:, 0] - mouth_c[0]) / (mouth_w / 2)
    in_span = (pts[:, 0] > c_l[0]) & (pts[:, 0] < c_r[0])
    gap_x = iu[:, 0]
    gaps = np.maximum(_polyline_y(il[:, 0], il[:, 1], gap_x) - iu[:, 1], 0.0)
    order = np.argsort(gap_x)

    def rest_gap(x, _gx=gap_x[order], _g=gaps[order]):
        return np.interp(x, _gx, _g, left=0.0, right=0.0)

    head_c = np.array([(oval[:, 0].max() + oval[:, 0].min()) / 2, pts[lm.FOREHEAD_TOP, 1] + 0.40 * face_h])
    head_axes = np.array([0.5 * face_w * 1.3, 0.72 * face_h])
    return _Geometry(pts, z, mouth_w, iod, face_w, face_h, mouth_c, upper, lower, below, s, in_span, rest_gap,
                     head_c, head_axes)


# --------------------------------------------------------------------------------------------------
# Sparse landmark motions per control (forward displacement in pixels at control value 1)


def _motion(g: _Geometry, name: str) -> np.ndarray:
    """Forward displacement (478, 2) of every landmark for control ``name`` at value 1."""
    pts, n = g.pts, len(g.pts)
    d = np.zeros((n, 2))
    mw = g.mouth_w
    x, y = pts[:, 0], pts[:, 1]
    lips = g.upper_lip | g.lower_lip
    corner_ids = list(lm.MOUTH_CORNERS) + list(lm.INNER_CORNERS)
    s = np.clip(g.s, 0, 1)
    near_corner = np.minimum(np.linalg.norm(pts - pts[lm.MOUTH_CORNERS[0]], axis=1),
                             np.linalg.norm(pts - pts[lm.MOUTH_CORNERS[1]], axis=1))
    if name == "jaw_open":
        # The mandible drops: full at the lower lip and chin, less toward the jaw angles (frontal view of a
        # rotation about the ear axis), a third at the mouth corners, nothing above the corner-ear line.
        lat = np.sqrt(np.clip(1 - ((x - g.mouth_c[0]) / (0.62 * g.face_w)) ** 2, 0, 1))
        below = g.below
        v = np.where(below >= 0, 0.35 + 0.65 * _smoothstep(below / (0.45 * mw)),
                     0.35 * _smoothstep((below + 0.45 * mw) / (0.45 * mw)))
        v = np.where(g.lower_lip, np.maximum(v, 1 - 0.65 * s ** 2), v)
        v = np.where(g.in_span & (below > 0) & ~g.upper_lip, np.maximum(v, 1 - 0.65 * s ** 2), v)
        v = np.where(g.upper_lip, 0.35 * s ** 2, v)
        v[corner_ids] = 0.35
        d[:, 1] = 0.38 * mw * lat * v
    elif name == "upper_lip":  # + raises the upper lip (shows the upper teeth)
        w = np.where(g.upper_lip, 1 - 0.6 * s ** 2, 0.0)
        w = np.where(g.lower_lip, 0.4 * s ** 2, w)
        lateral = ~g.in_span & ~lips
        w = np.where(lateral, 0.4 * np.exp(-(near_corner / (0.2 * mw)) ** 2), w)
        w[corner_ids] = 0.4
        d[:, 1] = -0.10 * mw * w
    elif name == "lower_lip+":  # lips meet (whatever the portrait's rest gap) and press lightly
        lift = g.rest_gap(x) + 0.03 * mw * (1 - s ** 2)
        below_lip = g.in_span & (g.below > 0) & ~lips
        out_lower = _polyline_y(pts[lm.LIPS_OUTER_LOWER, 0], pts[lm.LIPS_OUTER_LOWER, 1], x)
        decay = np.exp(-np.maximum(y - out_lower, 0) / (0.3 * mw))
        d[:, 1] = np.where(g.lower_lip, -lift, np.where(below_lip, -lift * decay, 0.0))
        d[corner_ids] = 0
    elif name == "lower_lip-":  # the lower lip drops, baring the lower teeth
        drop = 0.10 * mw * (1 - 0.7 * s ** 2)
        below_lip = g.in_span & (g.below > 0) & ~lips
        out_lower = _polyline_y(pts[lm.LIPS_OUTER_LOWER, 0], pts[lm.LIPS_OUTER_LOWER, 1], x)
        decay = np.exp(-np.maximum(y - out_lower, 0) / (0.25 * mw))
        d[:, 1] = np.where(g.lower_lip, drop, np.where(below_lip, drop * decay, 0.0))
        d[corner_ids] = 0
    elif name == "lip_round":  # corners move in, the centre opens a little: an "o"
        inward = -0.30 * (x - g.mouth_c[0])
        corner_motion = 0.15 * mw
        fall = np.exp(-(near_corner / (0.35 * mw)) ** 2)
        d[:, 0] = np.where(lips, inward, np.where(g.in_span & (np.abs(g.below) < 0.5 * mw), inward * 0.6, 0.0))
        lateral = ~g.in_span & ~lips
        d[:, 0] = np.where(lateral, -np.sign(x - g.mouth_c[0]) * corner_motion * fall, d[:, 0])
        d[corner_ids, 0] = inward[corner_ids]
        d[:, 1] = np.where(g.upper_lip, -0.05 * mw * (1 - s ** 2), np.where(g.lower_lip, 0.06 * mw * (1 - s ** 2), 0.0))
    elif name == "lip_spread":  # smile: corners out and up, cheeks lift
        side = np.sign(x - g.mouth_c[0])
        corner = np.array([0.12 * mw, -0.06 * mw])
        fall = np.exp(-(near_corner / (0.45 * mw)) ** 2)
        lat = ~g.in_span
        d[:, 0] = np.where(lips, side * corner[0] * s, np.where(lat, side * corner[0] * fall, 0.0))
        d[:, 1] = np.where(lips, corner[1] * s ** 2, np.where(lat, corner[1] * fall, 0.0))
        cheek = lat & (g.below < 0) & (g.below > -0.9 * mw)
        d[:, 1] += np.where(cheek, -0.03 * mw * np.exp(-(near_corner / (0.6 * mw)) ** 2), 0.0)
        d[corner_ids, 0] = side[corner_ids] * corner[0]
        d[corner_ids, 1] = corner[1]
    elif name in ("brow+", "brow-"):
        brows = lm.RIGHT_BROW + lm.LEFT_BROW
        brow_y = pts[brows, 1].mean()
        lid_y = pts[lm.RIGHT_EYE_UPPER + lm.LEFT_EYE_UPPER, 1].mean()
        top_y = pts[lm.FOREHEAD_TOP, 1] - 0.05 * g.face_h
        prof = np.where(y < brow_y, np.clip((y - top_y) / max(brow_y - top_y, 1), 0, 1),
                        np.clip(1 - (y - brow_y) / max(lid_y - brow_y, 1) * 0.85, 0, 1))
        prof = np.where(y > lid_y + 0.02 * g.iod, 0.0, prof)
        prof[brows] = 1.0
        span = np.abs(x - g.head_c[0]) / (0.75 * g.face_w)
        prof = prof * np.clip(1.3 - span, 0, 1)
        if name == "brow+":
            d[:, 1] = -0.08 * g.iod * prof
        else:
            d[:, 1] = 0.05 * g.iod * prof
            d[:, 0] = -np.sign(x - g.head_c[0]) * 0.025 * g.iod * prof
    elif name in ("head_yaw", "head_pitch"):  # per degree: parallax from the mesh depth
        z_c = g.z[list(lm.CHEEK_SILHOUETTE)].mean() + 0.25 * g.face_w
        par = math.radians(1.0) * (z_c - g.z)
        d[:, 0 if name == "head_yaw" else 1] = par
    else:
        raise ValueError(name)
    return d


# --------------------------------------------------------------------------------------------------
# Dense fields


def _ring(g: _Geometry, radius: float, n: int = 56) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return g.head_c + radius * g.head_axes * np.stack([np.cos(t), np.sin(t)], axis=1)


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    r2 = np.maximum(r2, 1e-12)
    return 0.5 * r2 * np.log(r2)  # r^2 log r (-> 0 at r = 0)


def _tps(points: np.ndarray, values: np.ndarray, query: np.ndarray, smoothing: float = 2.0) -> np.ndarray:
    """Thin-plate spline through ``points`` (n, 2) with ``values`` (n, k), evaluated at ``query`` (m, 2).

    ``smoothing`` is added to the kernel's diagonal (as in scipy's RBFInterpolator), trading exactness at
    the points for smoothness between close points with different motions.
    """
    # Merge duplicates (mesh points can coincide on a closed mouth) to keep the system well posed.
    key = np.round(points * 4).astype(np.int64)
    _, idx = np.unique(key[:, 0] * 100003 + key[:, 1], return_index=True)
    idx = np.sort(idx)
    p, v = points[idx].astype(np.float64), values[idx].astype(np.float64)
    center = p.mean(0)
    p = p - center
    q = query.astype(np.float64) - center
    n = len(p)
    r2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _tps_kernel(r2) + smoothing * np.eye(n)
    poly = np.hstack([np.ones((n, 1)), p])
    system[:n, n:] = poly
    system[n:, :n] = poly.T
    rhs = np.vstack([v, np.zeros((3, v.shape[1]))])
    coef = np.linalg.solve(system, rhs)
    out = np.empty((len(q), v.shape[1]))
    for i in range(0, len(q), 4096):  # bounded memory
        qq = q[i:i + 4096]
        r2 = (qq ** 2).sum(1)[:, None] + (p ** 2).sum(1)[None, :] - 2.0 * qq @ p.T
        kq = _tps_kernel(r2)
        out[i:i + 4096] = kq @ coef[:n] + np.hstack([np.ones((len(qq), 1)), qq]) @ coef[n:]
    return out


def compute_fields(points: np.ndarray, size: int, step: int = GRID_STEP):
    """(roi, step, bases, mask) for a face with landmarks ``points`` in an aligned ``size`` crop."""
    g = _geometry(points)
    outer = 1.0 + g.feather
    x0 = int(max(0, math.floor(g.head_c[0] - outer * g.head_axes[0]) - 2))
    x1 = int(min(size, math.ceil(g.head_c[0] + outer * g.head_axes[0]) + 3))
    y0 = int(max(0, math.floor(g.head_c[1] - outer * g.head_axes[1]) - 2))
    y1 = int(min(size, math.ceil(g.head_c[1] + outer * g.head_axes[1]) + 3))
    # Sample j sits at pixel x0 + (step - 1) / 2 + j * step: the centre of a step x step block, which is
    # where cv2.resize puts it, so the renderer upsamples with one resize.
    off = (step - 1) / 2
    gw = -(-(x1 - x0) // step)
    gh = -(-(y1 - y0) // step)
    gx, gy = np.meshgrid(x0 + off + step * np.arange(gw, dtype=np.float64),
                         y0 + off + step * np.arange(gh, dtype=np.float64))
    query = np.stack([gx.ravel(), gy.ravel()], axis=1)
    mask = g.head_mask(query).reshape(gh, gw)
    window = 1.0 - _smoothstep((np.abs(gx - g.mouth_c[0]) - 0.5 * g.mouth_w) / (0.35 * g.mouth_w))
    ring = _ring(g, outer)
    neck_x = np.linspace(g.pts[lm.FACE_OVAL, 0].min(), g.pts[lm.FACE_OVAL, 0].max(), 9)
    neck = np.stack([neck_x, np.full_like(neck_x, g.pts[lm.CHIN, 1] + 0.35 * g.face_h)], axis=1)
    anchors = np.vstack([ring, neck])

    bases: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    all_pts = np.ones(len(g.pts), bool)
    all_pts[lm.N_LANDMARKS - 10:] = False  # iris points: no use here and close to lid points
    lower_side = (g.lower_lip | ((g.below > 0) & ~g.upper_lip)) & g.in_span
    upper_side = (g.upper_lip | ((g.below <= 0) & ~g.lower_lip)) & g.in_span
    # Three point sets (all, above the mouth line, below it): one spline solve each, all controls at once.
    sets = {"all": all_pts, "up": all_pts & ~lower_side, "low": all_pts & ~upper_side}
    jobs: dict[str, list[tuple[str, np.ndarray]]] = {k: [] for k in sets}
    for name in SPLIT_CONTROLS + SHARED_CONTROLS + ("head_yaw", "head_pitch"):
        d = _motion(g, name)
        if name in SPLIT_CONTROLS:
            jobs["up"].append((name, d))
            jobs["low"].append((name, d))
        else:
            jobs["all"].append((name, d))
    dense: dict[tuple[str, str], np.ndarray] = {}
    for key, items in jobs.items():
        keep = sets[key]
        pts = np.vstack([g.pts[keep], anchors])
        vals = np.hstack([np.vstack([d[keep], np.zeros((len(anchors), 2))]) for _, d in items])
        out = _tps(pts, vals, query).reshape(gh, gw, len(items), 2)
        for j, (name, _) in enumerate(items):
            # backward field: an output pixel samples the photo at -d, limited to the head region
            dense[(key, name)] = (-out[:, :, j, :] * mask[..., None]).astype(np.float32)
    for name in SPLIT_CONTROLS:
        up, low = dense[("up", name)], dense[("low", name)]
        # Beyond the mouth corners one field serves both sides, so the skin there cannot tear.
        bases[name] = (up, (up + (low - up) * window[..., None]).astype(np.float32))
    for name in SHARED_CONTROLS + ("head_yaw", "head_pitch"):
        f = dense[("all", name)]
        bases[name] = (f, f)
    # Roll (per degree, clockwise) about the neck, and breathing (1.5 px up): analytic, under the head mask.
    pivot = np.array([g.head_c[0], g.pts[lm.CHIN, 1] + 0.5 * g.face_h])
    th = math.radians(1.0)
    roll = np.stack([th * (pivot[1] - gy), th * (gx - pivot[0])], axis=-1) * mask[..., None]
    bases["head_roll"] = ((-roll).astype(np.float32),) * 2
    breath = np.zeros((gh, gw, 2), np.float32)
    breath[..., 1] = 1.5 * mask
    bases["breath"] = (breath, breath)
    return (x0, y0, x1, y1), step, bases, mask.astype(np.float32)


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


def _cache_path(photo: Path, name: str, out_dir: Path | None) -> Path:
    return (out_dir or photo.parent) / f"{name}{CACHE_SUFFIX}"


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
    cache = _cache_path(photo, name, out)
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


# --------------------------------------------------------------------------------------------------
# Library of faces


def default_faces_dir() -> Path:
    """The package's faces folder (the repository's ``faces/``)."""
    return Path(__file__).resolve().parent.parent.parent / "faces"


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
        cache = _cache_path(photo, name, None)
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
