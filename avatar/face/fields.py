"""Animation fields: how each control moves the face's pixels, from sparse landmark motions
interpolated with thin-plate splines (see prepare.py for the whole preparation)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from avatar.face import landmarks as lm

GRID_STEP = 4  # pixels between samples of the cached displacement fields
# Controls whose fields differ above and below the mouth line ("U" for the part above, "L" below).
SPLIT_CONTROLS = ("jaw_open", "upper_lip", "lower_lip+", "lower_lip-", "lip_round")
SHARED_CONTROLS = ("lip_spread", "brow+", "brow-")
GLOBAL_CONTROLS = ("head_yaw", "head_pitch", "head_roll", "breath")  # head pose: applied after the expression
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


