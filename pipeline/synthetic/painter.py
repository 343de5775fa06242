"""Rasterize figures with a painter's algorithm, shade them, and decide keypoint visibility.

The canvas is supersampled by an integer factor S: canvas pixel j covers image coordinate
(j + 0.5) / S - 0.5, so image point x lands on canvas coordinate (x + 0.5) * S - 0.5, and an S x S block
average (cv2.INTER_AREA) gives back the image. A label map (H*S, W*S) int32 records which part is on
top at every canvas pixel (-1 = background or a non-person occluder); visibility is read from it.
"""

import cv2
import numpy as np

from pipeline.pose.keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS
from pipeline.synthetic.parts import FACING_MIN, JOINED, Figure, Part, owner_table

SHIFT = 4                          # cv2 fixed-point bits for sub-pixel polygon vertices
_ONE = 1 << SHIFT
_NOSE = KEYPOINT_INDEX["nose"]


class Canvas:
    """A supersampled float32 RGB image (H*S, W*S, 3) and its part label map (H*S, W*S)."""

    def __init__(self, background: np.ndarray, scale: int, light: np.ndarray):
        h, w = background.shape[:2]
        self.scale = scale
        self.size = (h, w)
        bg = background.astype(np.float32)
        self.image = cv2.resize(bg, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR) if scale > 1 else bg
        self.labels = np.full(self.image.shape[:2], -1, dtype=np.int32)
        self.light = (light / np.linalg.norm(light)).astype(np.float32)  # (3,) image x, y (down), to viewer
        self.part_names: list[str] = []                     # by label
        self.part_owner: list[int] = []                     # figure index by label
        self.figures: list[Figure] = []
        self._silhouettes: list[tuple[np.ndarray, float]] = []

    def to_canvas(self, pts: np.ndarray) -> np.ndarray:
        return (pts + 0.5) * self.scale - 0.5

    def paint_figure(self, figure: Figure) -> None:
        """Paint every part of `figure` over what is there, back to front, and record its silhouette."""
        index = len(self.figures)
        self.figures.append(figure)
        hh, ww = self.labels.shape
        extent = self.to_canvas(figure.extent().reshape(2, 2))            # [[x0, y0], [x1, y1]] canvas pixels
        lo = np.clip(np.floor(extent[0]).astype(int) - 2, 0, [ww, hh])
        hi = np.clip(np.ceil(extent[1]).astype(int) + 3, 0, [ww, hh])
        sil = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), dtype=bool)
        for part in figure.parts:
            label = len(self.part_names)
            self.part_names.append(part.name)
            self.part_owner.append(index)
            painted = _paint_part(self, part, label, figure)
            if painted is not None and sil.size:
                sl, mask = painted
                y0, x0 = sl[0].start - lo[1], sl[1].start - lo[0]
                y0c, x0c = max(y0, 0), max(x0, 0)
                y1c, x1c = min(y0 + mask.shape[0], sil.shape[0]), min(x0 + mask.shape[1], sil.shape[1])
                if y1c > y0c and x1c > x0c:
                    sil[y0c:y1c, x0c:x1c] |= mask[y0c - y0:y1c - y0, x0c - x0:x1c - x0]
        ys, xs = np.nonzero(sil)
        if xs.size == 0:
            self._silhouettes.append((np.zeros(4, dtype=np.float32), 0.0))
            return
        s = self.scale
        x0, y0 = (xs.min() + lo[0]) / s - 0.5, (ys.min() + lo[1]) / s - 0.5    # canvas pixel edges -> image
        x1, y1 = (xs.max() + lo[0] + 1) / s - 0.5, (ys.max() + lo[1] + 1) / s - 0.5
        self._silhouettes.append((np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float32), xs.size / s ** 2))

    def paint_occluder(self, mask: np.ndarray, colour: np.ndarray) -> None:
        """Cover canvas pixels (bool mask (H*S, W*S)) with a non-person object that hides keypoints."""
        self.image[mask] = colour
        self.labels[mask] = -1

    def outline(self, strength: float) -> None:
        """Darken the front pixel wherever two parts meet, except at joints of the same person."""
        lab = self.labels
        n = len(self.part_names)
        if n == 0:
            return
        kinds = sorted(set(self.part_names))
        kind_join = np.array([[frozenset((p, q)) in JOINED for q in kinds] for p in kinds])
        kind = np.array([kinds.index(p) for p in self.part_names] + [0])
        owner = np.array(self.part_owner + [-1])
        # (n+1, n+1): may labels i and j meet without an outline; index n is the background (label -1)
        joined = (owner[:, None] == owner[None]) & kind_join[kind[:, None], kind[None]]
        joined[n, :] = joined[:, n] = False
        flat = lab.reshape(-1)
        front = []
        for step, valid in ((1, np.s_[:, :-1]), (lab.shape[1], np.s_[:-1, :])):   # right and down neighbours
            idx = np.flatnonzero((lab[valid] != (lab[:, 1:] if step == 1 else lab[1:, :])).reshape(-1))
            # indices into the cropped view -> indices into the full map
            rows, cols = np.divmod(idx, lab[valid].shape[1])
            i = rows * lab.shape[1] + cols
            a, b = flat[i], flat[i + step]
            edge = ~joined[a % (n + 1), b % (n + 1)]
            front.append(np.where(a > b, i, i + step)[edge])       # the later-painted side is in front
        px = np.concatenate(front)
        px = px[flat[px] >= 0]
        img = self.image.reshape(-1, 3)
        img[px] *= strength

    def visibility(self, figure_index: int) -> np.ndarray:
        """COCO [x, y, v] (K, 3) float32 of one painted figure: 2 seen, 1 hidden, 0 outside (and x=y=0)."""
        fig = self.figures[figure_index]
        h, w = self.size
        out = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
        labels_of_fig = [i for i, o in enumerate(self.part_owner) if o == figure_index]
        owners = owner_table([self.part_names[i] for i in labels_of_fig])   # (K, parts of this figure)
        first = labels_of_fig[0] if labels_of_fig else 0
        hh, ww = self.labels.shape
        for k, (x, y) in enumerate(fig.keypoints):
            if not (-0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5):
                continue
            cx, cy = np.clip(np.rint(self.to_canvas(np.array([x, y]))).astype(int), 0, [ww - 1, hh - 1])
            lab = int(self.labels[cy, cx]) - first
            seen = 0 <= lab < owners.shape[1] and owners[k, lab] and fig.facing[k] >= FACING_MIN[k]
            out[k] = (x, y, 2.0 if seen else 1.0)
        return out

    def silhouette(self, figure_index: int) -> tuple[np.ndarray, float]:
        """Box [x, y, w, h] and pixel area of the figure's own silhouette (ignoring what covers it) in the image."""
        return self._silhouettes[figure_index]

    def result(self) -> np.ndarray:
        """The image (H, W, 3) float32, block-averaged back from the canvas."""
        h, w = self.size
        if self.scale == 1:
            return self.image
        return cv2.resize(self.image, (w, h), interpolation=cv2.INTER_AREA)


def _bbox_slice(canvas: Canvas, lo: np.ndarray, hi: np.ndarray):
    hh, ww = canvas.labels.shape
    x0, y0 = np.maximum(np.floor(lo).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(hi).astype(int) + 1, [ww, hh])
    if x1 <= x0 or y1 <= y0:
        return None, (0, 0)
    return (slice(y0, y1), slice(x0, x1)), (x0, y0)


def _polygon_mask(canvas: Canvas, part: Part):
    """(slice, bool crop mask) of the canvas pixels a capsule or hull covers, or (None, None)."""
    pts = canvas.to_canvas(part.points)
    r = max(part.radii) * canvas.scale if part.kind == "capsule" else 0.0
    sl, (x0, y0) = _bbox_slice(canvas, pts.min(0) - r - 1, pts.max(0) + r + 1)
    if sl is None:
        return None, None
    crop = np.zeros((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), dtype=np.uint8)
    fixed = np.rint((pts - [x0, y0]) * _ONE).astype(np.int32)
    if part.kind == "capsule":
        ra, rb = (max(rr * canvas.scale, 0.5) for rr in part.radii)
        a, b = fixed[0], fixed[1]
        d = (pts[1] - pts[0]) / max(np.linalg.norm(pts[1] - pts[0]), 1e-6)
        nrm = np.array([-d[1], d[0]]) * _ONE
        quad = np.rint([a + nrm * ra, b + nrm * rb, b - nrm * rb, a - nrm * ra]).astype(np.int32)
        cv2.fillConvexPoly(crop, quad, 1, cv2.LINE_8, SHIFT)
        cv2.circle(crop, (int(a[0]), int(a[1])), int(ra * _ONE), 1, -1, cv2.LINE_8, SHIFT)
        cv2.circle(crop, (int(b[0]), int(b[1])), int(rb * _ONE), 1, -1, cv2.LINE_8, SHIFT)
    else:
        cv2.fillConvexPoly(crop, cv2.convexHull(fixed), 1, cv2.LINE_8, SHIFT)
    return sl, crop.view(bool)


def _paint_part(canvas: Canvas, part: Part, label: int, figure: Figure):
    """Paint one part; returns (slice, crop mask) of what it covered, or None."""
    if part.kind == "head":
        return _paint_head(canvas, part, label, figure)
    sl, mask = _polygon_mask(canvas, part)
    if sl is None:
        return None
    yy, xx = np.nonzero(mask)
    if yy.size == 0:
        return None
    ys, xs = yy + sl[0].start, xx + sl[1].start
    p = (np.stack([xs, ys], 1).astype(np.float32) + 0.5) / canvas.scale - 0.5   # (N, 2) image coordinates
    a, b = part.points[0].astype(np.float32), part.points[1].astype(np.float32)
    if part.kind == "capsule":
        ab = b - a
        nrm = np.array([-ab[1], ab[0]], dtype=np.float32) / max(float(np.linalg.norm(ab)), 1e-6)
        t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-9), 0, 1)
        r = np.maximum(part.radii[0] + t * (part.radii[1] - part.radii[0]), 0.5)
        q = ((p - a) @ nrm) / r                            # (N,) signed distance across the limb, in radii
    else:
        a, b = part.axis.astype(np.float32)
        d = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
        nrm = np.array([-d[1], d[0]], dtype=np.float32)
        q = ((p - a) @ nrm) / part.radii[0]
    # cylinder shading across the limb or torso only, so rounded ends blend into the next part
    q = np.clip(q * 0.9, -0.97, 0.97)
    lam = q * (nrm @ canvas.light[:2]) + np.sqrt(1 - q * q) * canvas.light[2]
    _write(canvas, part, label, figure, sl, mask, p, lam)
    return sl, mask


def _write(canvas, part, label, figure, sl, mask, p, lam, colour=None) -> None:
    """Store shaded colours (Lambert term lam (N,)) and the part label where the crop mask is set.

    p (N, 2) are the image coordinates of the mask pixels in row-major order (as np.nonzero gives them).
    """
    shade = (0.55 + 0.5 * np.clip(lam, 0, 1)) * part.shade
    if colour is None:
        uv = (p - figure.origin.astype(np.float32)) / figure.height
        colour = part.texture.sample(uv[:, 0], uv[:, 1])
    canvas.image[sl][mask] = colour * shade[:, None]
    canvas.labels[sl][mask] = label


def _head_surface(canvas: Canvas, part: Part, sl):
    """Per-pixel ray cast onto the head ellipsoid: mask of the crop and unit-sphere points (N, 3)."""
    ys, xs = np.mgrid[sl]
    img = (np.stack([xs, ys], -1).reshape(-1, 2) + 0.5) / canvas.scale - 0.5
    off = img - part.points[0]                                     # (N, 2) image pixels from the centre
    minv = np.linalg.inv(part.head["matrix"])                      # camera offset -> unit sphere
    a, b = off @ minv[:, :2].T, minv[:, 2]                         # s = a + Z b, (N, 3) and (3,)
    ab, bb, aa = a @ b, b @ b, (a * a).sum(1)
    disc = ab * ab - bb * (aa - 1)
    mask = disc >= 0
    zz = (-ab[mask] + np.sqrt(disc[mask])) / bb                    # front surface
    s = a[mask] + zz[:, None] * b
    return mask.reshape(ys.shape), s


def _paint_nose(canvas: Canvas, part: Part, label: int, sl, org, head_mask: np.ndarray) -> np.ndarray:
    """The nose sticks out of the ellipsoid; it only shows where it leaves the head outline (profiles)."""
    m = part.head["matrix"]
    tip = canvas.to_canvas(part.points[0] + 0.97 * (m[:2] @ np.array([0.0, -0.2, 1.0])))
    bump = np.zeros(head_mask.shape, dtype=np.uint8)
    rad = max(0.22 * np.linalg.norm(m[:, 0]) * canvas.scale, 0.5)
    centre = np.rint((tip - org) * _ONE).astype(int)
    cv2.circle(bump, (int(centre[0]), int(centre[1])), int(rad * _ONE), 1, -1, cv2.LINE_8, SHIFT)
    bump = bump.view(bool) & ~head_mask
    by, bx = np.nonzero(bump)
    canvas.image[by + sl[0].start, bx + sl[1].start] = np.asarray(part.head["look"].skin.colour) * 0.8
    canvas.labels[by + sl[0].start, bx + sl[1].start] = label
    return bump


def _paint_head(canvas: Canvas, part: Part, label: int, figure: Figure):
    """Skin ellipsoid with a hair cap, eyes, brows, mouth and ears placed on its 3-D surface."""
    r = part.head["radius"] * canvas.scale * 1.15
    c = canvas.to_canvas(part.points)[0]
    sl, org = _bbox_slice(canvas, c - r - 1, c + r + 1)
    if sl is None:
        return None
    mask, s = _head_surface(canvas, part, sl)
    covered = mask
    if figure.facing[_NOSE] > -0.3:
        covered = mask | _paint_nose(canvas, part, label, sl, org, mask)
    if not mask.any():
        return sl, covered
    yy, xx = np.nonzero(mask)
    ys, xs = yy + sl[0].start, xx + sl[1].start
    p = (np.stack([xs, ys], 1) + 0.5) / canvas.scale - 0.5
    look = part.head["look"]
    uv = (p - figure.origin) / figure.height
    skin = look.skin.sample(uv[:, 0], uv[:, 1])
    colour = skin.copy()
    sx, sy, sz = s[:, 0], s[:, 1], s[:, 2]
    if look.hair_style != "bald":
        line = 0.45 - 1.1 * np.maximum(0, -sz) - 0.35 * np.abs(sx) - (0.25 if look.hair_style == "long" else 0)
        hair = sy > line
        colour[hair] = look.hair.sample(uv[hair, 0], uv[hair, 1])
    front = sz > 0.3                                        # face features only on the front of the head
    brow = front & (sy > 0.3) & (sy < 0.38) & (np.abs(sx) > 0.15) & (np.abs(sx) < 0.6)
    colour[brow] *= 0.45
    for side in (1.0, -1.0):
        d2 = (((s - _EYE * [side, 1, 1]) * [1.0, 1.6, 1.0]) ** 2).sum(1)
        colour[d2 < 0.012] = (235, 235, 230)
        colour[d2 < 0.005] = (35, 28, 25)
        de = np.linalg.norm(s - [side, 0.0, -0.05], axis=1)
        colour[(de < 0.3) & (de > 0.22)] *= 0.8
    mouth = front & (np.abs(sy + 0.5) < 0.05) & (np.abs(sx) < 0.28)
    colour[mouth] = skin[mouth] * np.array([0.75, 0.45, 0.45])
    nostril = front & (np.linalg.norm(s - [0.08, -0.25, 0.96], axis=1) < 0.12) & (sx > 0.02)
    colour[nostril] *= 0.85
    n = s @ part.head["normal_matrix"].T                               # (N, 3) camera frame, y up
    n[:, 1] *= -1
    lam = (n @ canvas.light) / np.linalg.norm(n, axis=1)
    _write(canvas, part, label, figure, sl, mask, p, lam, colour)
    return sl, covered


_EYE = np.array([0.42, 0.12, 0.8]) / np.linalg.norm([0.42, 0.12, 0.8])
