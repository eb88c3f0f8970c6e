"""Renderers: controls -> BGR frame.

``Renderer`` is the seam: ``render(controls) -> np.ndarray`` (BGR uint8, size x size) and
``render_batch(list_of_controls) -> list[np.ndarray]``. ``WarpRenderer`` is the CPU backend: one
``cv2.remap`` per frame of the portrait by a displacement field built from the face's cached bases; a GPU
batched warper or a neural lip-sync model (with user-supplied weights) can implement the same interface
and be returned by ``create_renderer``.

How a ``WarpRenderer`` frame is made (see prepare.py for the cached fields):

1. Weighted sums of the coarse per-control fields give two backward fields: A for everything above the
   mouth line and B for the part below it (jaw, lower lip), so the lips can part with a clean edge.
2. The inner-lip and eyelid landmarks are moved to where this frame puts them (fixed-point inversion of
   the fields), giving per-column curves: upper lip, lower lip, the edge between the two fields.
3. The fields are upsampled to pixels (``warpAffine``), mixed by a mask that is sharp between the lips and
   soft beyond the mouth corners, blinks are added as a per-column eyelid stretch, and one ``remap``
   (bicubic) warps the head region. Outside that region the frame is the portrait, byte for byte.
4. Where the lips part wider than in the photo, the mouth cavity is drawn between them with analytic
   anti-aliased edges: dark, shaded interior, a hint of upper teeth, tongue and lower teeth when wide.
"""

from __future__ import annotations

import math
import threading
from typing import Mapping, Protocol, Sequence

import numpy as np

from avatar.face import landmarks as lm
from avatar.face.prepare import PreparedFace


class Renderer(Protocol):
    size: int

    def render(self, controls: Mapping[str, float]) -> np.ndarray:
        """One BGR uint8 frame (size, size, 3) for a dict of controls (missing names are neutral)."""

    def render_batch(self, batch: Sequence[Mapping[str, float]]) -> list[np.ndarray]:
        """Frames for several control dicts (a batched backend may do them at once)."""


# control -> [(basis, gain for positive values, gain for negative values)]
_BASIS_MAP = {
    "jaw_open": [("jaw_open", 1.0, 0.0)],
    "lip_round": [("lip_round", 1.0, 0.0)],
    "lip_spread": [("lip_spread", 1.0, 0.0)],
    "upper_lip": [("upper_lip", 1.0, 0.5)],
    "lower_lip": [("lower_lip+", 1.0, 0.0), ("lower_lip-", 0.0, -1.0)],
    "brow": [("brow+", 1.0, 0.0), ("brow-", 0.0, -1.0)],
    "head_yaw": [("head_yaw", 1.0, 1.0)],
    "head_pitch": [("head_pitch", 1.0, 1.0)],
    "head_roll": [("head_roll", 1.0, 1.0)],
    "breath": [("breath", 1.0, 0.0)],
}
_LIMITS = {"head_yaw": 10.0, "head_pitch": 10.0, "head_roll": 10.0}


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class _FaceData:
    """Read-only per-face render data, shared by all renderers (and sessions) of one face."""

    def __init__(self, face: PreparedFace):
        self.face = face
        x0, y0, x1, y1 = face.roi
        self.roi = (x0, y0, x1, y1)
        self.step = face.grid_step
        self.names = list(face.bases)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.up = np.stack([face.bases[n][0] for n in self.names]).astype(np.float32)  # (K, gh, gw, 2)
        self.low = np.stack([face.bases[n][1] for n in self.names]).astype(np.float32)
        self.split = np.array([face.bases[n][0] is not face.bases[n][1] for n in self.names])
        h, w = y1 - y0, x1 - x0
        self.gx = np.broadcast_to(np.arange(x0, x1, dtype=np.float32)[None, :], (h, w))
        self.gy = np.broadcast_to(np.arange(y0, y1, dtype=np.float32)[:, None], (h, w))
        self.col_y = np.arange(y0, y1, dtype=np.float32)[:, None]
        pts = face.landmarks[:, :2].astype(np.float64)
        self.pts = pts
        iu, il = pts[lm.LIPS_INNER_UPPER], pts[lm.LIPS_INNER_LOWER]
        xl, xr = pts[lm.INNER_CORNERS[0], 0], pts[lm.INNER_CORNERS[1], 0]
        self.mouth_w = float(np.linalg.norm(pts[lm.MOUTH_CORNERS[1]] - pts[lm.MOUTH_CORNERS[0]]))
        # Rest gap between the inner lips as a function of the position along the mouth (0..1).
        fr = np.linspace(0, 1, 65)
        xs = xl + fr * (xr - xl)
        up_y = np.interp(xs, *_sorted(iu))
        lo_y = np.interp(xs, *_sorted(il))
        gap = np.maximum(lo_y - up_y, 0.0)
        gap[gap < 1.0] = 0.0
        self.rest_frac, self.rest_gap = fr, gap
        self.pivots = [lm.CHEEK_SILHOUETTE[0], lm.CHEEK_SILHOUETTE[1]]
        # Lighting of the face, for the synthetic mouth interior.
        img = face.image
        cheek = pts[[50, 280, 205, 425]].astype(int)
        samples = np.array([img[max(0, y - 3):y + 4, max(0, x - 3):x + 4].reshape(-1, 3).mean(0) for x, y in cheek])
        skin = samples.mean(0)
        self.light = float(np.clip(skin.mean() / 150.0, 0.45, 1.3))
        self.skin = skin
        # Teeth colour: from the photo's visible teeth when the mouth is open at rest, else off-white.
        self.teeth = self._teeth_color(img, iu, il)
        self.image = img
        self.eye_sets = {"blink_right": (lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_LOWER),
                         "blink_left": (lm.LEFT_EYE_UPPER, lm.LEFT_EYE_LOWER)}
        self.eye_open = {k: float(np.max(np.interp(np.linspace(pts[u[0], 0], pts[u[-1], 0], 16), *_sorted(pts[d]))
                                          - np.interp(np.linspace(pts[u[0], 0], pts[u[-1], 0], 16), *_sorted(pts[u]))))
                         for k, (u, d) in self.eye_sets.items()}

    def _teeth_color(self, img, iu, il) -> np.ndarray:
        default = np.array([196.0, 206.0, 214.0]) * min(self.light, 1.05)
        if self.rest_gap.max() < 3:
            return default
        mask = np.zeros(img.shape[:2], np.uint8)
        import cv2

        poly = np.vstack([iu, il[::-1]]).astype(np.int32)
        cv2.fillPoly(mask, [poly], 255)
        px = img[mask > 0].reshape(-1, 3).astype(np.float64)
        if len(px) < 12:
            return default
        lum = px.mean(1)
        bright = px[lum >= np.percentile(lum, 60)]
        return bright.mean(0) * 0.97

    def sample(self, field: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Bilinear sample of a coarse (gh, gw, 2) field at pixel points (n, 2)."""
        gh, gw = field.shape[:2]
        u = np.clip((xy[:, 0] - self.roi[0]) / self.step, 0, gw - 1.0001)
        v = np.clip((xy[:, 1] - self.roi[1]) / self.step, 0, gh - 1.0001)
        i, j = np.floor(v).astype(int), np.floor(u).astype(int)
        fv, fu = (v - i)[:, None], (u - j)[:, None]
        return ((field[i, j] * (1 - fu) + field[i, j + 1] * fu) * (1 - fv)
                + (field[i + 1, j] * (1 - fu) + field[i + 1, j + 1] * fu) * fv)

    def targets(self, field: np.ndarray, idx: list[int]) -> np.ndarray:
        """Where the landmarks ``idx`` appear in the output under the backward ``field`` (q + F(q) = p)."""
        p = self.pts[idx]
        q = p - self.sample(field, p)
        for _ in range(3):
            q = p - self.sample(field, q)
        return q


def _sorted(points: np.ndarray):
    order = np.argsort(points[:, 0], kind="stable")
    return points[order, 0], points[order, 1]


_data_lock = threading.Lock()


def face_data(face: PreparedFace) -> _FaceData:
    with _data_lock:
        data = face._shared.get("warp")
        if data is None:
            data = face._shared["warp"] = _FaceData(face)
        return data


class WarpRenderer:
    """CPU renderer: mesh-driven dense warp + synthetic mouth interior. Thread-safe; cheap to create."""

    def __init__(self, face: PreparedFace, *, interpolation: str = "cubic"):
        import cv2

        self.face = face
        self.size = face.size
        self.data = face_data(face)
        self._interp = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}[interpolation]

    # -- controls -> basis weights --------------------------------------------------------------
    def _weights(self, controls: Mapping[str, float]) -> np.ndarray:
        d = self.data
        w = np.zeros(len(d.names), np.float32)
        for name, value in controls.items():
            spec = _BASIS_MAP.get(name)
            if spec is None or not value:
                continue
            v = float(value)
            limit = _LIMITS.get(name, 1.0)
            v = min(max(v, -limit), limit)
            for basis, gp, gn in spec:
                i = d.index.get(basis)
                if i is not None:
                    w[i] += v * (gp if v > 0 else gn)
        return w

    def render(self, controls: Mapping[str, float]) -> np.ndarray:
        import cv2

        d = self.data
        w = self._weights(controls)
        blinks = {k: min(max(float(controls.get(k, 0.0) or 0.0), 0.0), 1.0) for k in d.eye_sets}
        frame = d.image.copy()
        if not w.any() and not any(b > 0.01 for b in blinks.values()):
            return frame
        x0, y0, x1, y1 = d.roi
        h, wd = y1 - y0, x1 - x0
        # 1. coarse fields
        active = np.nonzero(w)[0]
        A = np.tensordot(w[active], d.up[active], axes=1) if len(active) else np.zeros(d.up.shape[1:], np.float32)
        split = active[d.split[active]]
        if len(split):
            Lc = A + np.tensordot(w[split], d.low[split] - d.up[split], axes=1)
        else:
            Lc = A
        # 2. where the lips go
        mouth = self._mouth_curves(A, Lc) if len(split) else None
        # 3. dense map
        inv = np.array([[1.0 / d.step, 0, 0], [0, 1.0 / d.step, 0]])
        Af = cv2.warpAffine(A, inv, (wd, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
        map_x = d.gx + Af[..., 0]
        map_y = d.gy + Af[..., 1]
        if mouth is not None:
            Bf = cv2.warpAffine(Lc - A, inv, (wd, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
            edge, inv_sigma = mouth["edge_cols"], mouth["inv_sigma_cols"]
            M = (d.col_y - edge[None, :]) * inv_sigma[None, :]
            M += 0.5
            np.clip(M, 0.0, 1.0, out=M)
            map_x += M * Bf[..., 0]
            map_y += M * Bf[..., 1]
        for key, b in blinks.items():
            if b > 0.01:
                self._blink(map_y, A, key, b)
        roi = cv2.remap(d.image, map_x, map_y, self._interp, borderMode=cv2.BORDER_REPLICATE)
        if mouth is not None:
            self._draw_mouth(roi, mouth)
        frame[y0:y1, x0:x1] = roi
        return frame

    def render_batch(self, batch: Sequence[Mapping[str, float]]) -> list[np.ndarray]:
        return [self.render(c) for c in batch]

    # -- mouth ------------------------------------------------------------------------------------
    def _mouth_curves(self, A: np.ndarray, Lc: np.ndarray) -> dict:
        d = self.data
        x0, y0, x1, y1 = d.roi
        iu = d.targets(A, lm.LIPS_INNER_UPPER)
        il = d.targets(Lc, lm.LIPS_INNER_LOWER)
        piv = d.targets(A, d.pivots)
        xl = min(iu[0, 0], il[0, 0])
        xr = max(iu[-1, 0], il[-1, 0])
        cols = np.arange(x0, x1, dtype=np.float64)
        up = np.interp(cols, *_sorted(iu))
        lo = np.interp(cols, *_sorted(il))
        frac = np.clip((cols - xl) / max(xr - xl, 1e-3), 0, 1)
        g0 = np.interp(frac, d.rest_frac, d.rest_gap)
        gap = lo - up
        inside = (cols >= xl) & (cols <= xr)
        edge = up + np.clip(gap, 0, g0) / 2
        # Beyond the corners the edge heads for the jaw pivots and softens with distance.
        e_l = edge[np.searchsorted(cols, xl)] if xl >= cols[0] else edge[0]
        e_r = edge[min(np.searchsorted(cols, xr), len(cols) - 1)]
        left = cols < xl
        right = cols > xr
        edge = np.where(left, np.interp(cols, [piv[0, 0], xl], [piv[0, 1], e_l]), edge)
        edge = np.where(right, np.interp(cols, [xr, piv[1, 0]], [e_r, piv[1, 1]]), edge)
        dist = np.where(left, xl - cols, np.where(right, cols - xr, 0.0))
        sigma = 0.6 + 0.8 * dist
        top = up + g0 / 2
        bottom = lo - g0 / 2
        return {"cols": cols, "inside": inside, "edge_cols": edge.astype(np.float32),
                "inv_sigma_cols": (1.0 / sigma).astype(np.float32), "top": top, "bottom": bottom,
                "frac": frac, "g0": g0, "xl": xl, "xr": xr}

    def _draw_mouth(self, roi: np.ndarray, m: dict) -> None:
        d = self.data
        x0, y0 = d.roi[0], d.roi[1]
        top, bottom, inside = m["top"], m["bottom"], m["inside"]
        open_ = np.where(inside, bottom - top, 0.0)
        cols = np.nonzero(open_ > 0.05)[0]
        if not len(cols):
            return
        c0, c1 = cols[0], cols[-1] + 1
        t, b = top[c0:c1], bottom[c0:c1]
        hgt = np.maximum(b - t, 0.0)
        r0 = int(math.floor(t.min() - 1)) - y0
        r1 = int(math.ceil(b.max() + 2)) - y0
        r0, r1 = max(r0, 0), min(r1, roi.shape[0])
        if r1 <= r0:
            return
        ys = np.arange(r0, r1, dtype=np.float64)[:, None] + y0  # pixel centres (absolute)
        cover = np.clip(np.minimum(b[None], ys + 0.5) - np.maximum(t[None], ys - 0.5), 0.0, 1.0)
        if not cover.any():
            return
        mw = d.mouth_w
        u = m["frac"][c0:c1][None]
        v = np.clip((ys - t[None]) / np.maximum(hgt[None], 1e-3), 0, 1)
        light = d.light
        # Interior: dark red-brown, darkest in the back centre, a little lighter near the lips.
        base = np.array([34.0, 30.0, 74.0]) * light
        depth = np.sin(np.pi * v) * np.sin(np.pi * u) ** 0.7
        shade = 0.95 - 0.55 * depth
        col = base[None, None] * shade[..., None]
        opening = np.clip(hgt / (0.28 * mw), 0, 1)[None]
        # Tongue, low in the mouth when it is open wide.
        tongue = _smoothstep((v - 0.55) / 0.35) * np.sin(np.pi * u) ** 0.5 * 0.55 * opening
        col += (np.array([78.0, 84.0, 168.0]) * light - col) * tongue[..., None]
        # Upper teeth hint under the upper lip (less of it when the photo already shows teeth).
        g0 = m["g0"][c0:c1][None]
        tooth_h = np.clip(np.minimum(0.095 * mw - g0 / 2, 0.6 * hgt[None]), 0, None)
        dy = ys - t[None]
        teeth_a = np.clip(tooth_h - dy + 0.5, 0, 1) * (dy > -0.5)
        teeth_a = teeth_a * _smoothstep(u / 0.22) * _smoothstep((1 - u) / 0.22) * 0.8
        tshade = 0.78 + 0.22 * np.sin(np.pi * u) - 0.22 * np.clip(dy / np.maximum(tooth_h, 1), 0, 1) ** 2
        shadow = 0.7 + 0.3 * np.clip(dy / 1.5, 0, 1)  # the upper lip's shadow on the teeth
        teeth_col = d.teeth[None, None] * (tshade * shadow)[..., None]
        col += (teeth_col - col) * teeth_a[..., None]
        # Lower teeth, faint, when wide open.
        low_h = 0.04 * mw * np.clip((hgt[None] - 0.2 * mw) / (0.15 * mw), 0, 1)
        dyb = b[None] - ys
        low_a = np.clip(low_h - dyb + 0.5, 0, 1) * (dyb > -0.5) * _smoothstep(u / 0.3) * _smoothstep((1 - u) / 0.3) * 0.35
        col += (d.teeth[None, None] * 0.8 - col) * low_a[..., None]
        a = cover[..., None]
        patch = roi[r0:r1, c0:c1].astype(np.float32)
        patch += (col.astype(np.float32) - patch) * a
        roi[r0:r1, c0:c1] = np.clip(patch + 0.5, 0, 255).astype(np.uint8)

    # -- eyes -------------------------------------------------------------------------------------
    def _blink(self, map_y: np.ndarray, A: np.ndarray, key: str, b: float) -> None:
        d = self.data
        x0, y0 = d.roi[0], d.roi[1]
        upper_idx, lower_idx = d.eye_sets[key]
        ul = d.targets(A, upper_idx)
        ll = d.targets(A, lower_idx)
        xa = int(math.ceil(min(ul[:, 0].min(), ll[:, 0].min())))
        xb = int(math.floor(max(ul[:, 0].max(), ll[:, 0].max())))
        if xb <= xa:
            return
        cols = np.arange(xa, xb + 1, dtype=np.float64)
        u = np.interp(cols, *_sorted(ul))
        lo = np.interp(cols, *_sorted(ll))
        hgt = np.maximum(lo - u, 0.0)
        H = max(d.eye_open[key], 1.0)
        yb = u - 1.3 * H  # the skin above the lid stretches from here
        yt = u + b * hgt  # where the lid edge goes
        r0 = int(math.floor(yb.min())) - 1
        r1 = int(math.ceil(yt.max())) + 2
        rr0, rr1 = max(r0 - y0, 0), min(r1 - y0, map_y.shape[0])
        cc0, cc1 = xa - x0, xb + 1 - x0
        if rr1 <= rr0 or cc0 < 0 or cc1 > map_y.shape[1]:
            return
        ys = np.arange(rr0, rr1, dtype=np.float64)[:, None] + y0
        stretch = (b * hgt) / (1.3 * H + b * hgt)
        e = -(ys - yb[None]) * stretch[None]
        e = np.where((ys >= yb[None]) & (ys <= yt[None]), e, 0.0)
        map_y[rr0:rr1, cc0:cc1] += e.astype(np.float32)


def create_renderer(face: PreparedFace, backend: str = "warp", **options) -> Renderer:
    """A renderer for ``face``. Backends: "warp" (CPU, default)."""
    if backend == "warp":
        return WarpRenderer(face, **options)
    from avatar.errors import ConfigError

    raise ConfigError(f"unknown face renderer {backend!r}; available: warp")
