"""Textured backgrounds in distinct families, so a held-out set can use backgrounds never trained on.

Every function takes (rng, height, width) and returns float32 RGB (H, W, 3) in [0, 255].
"""

from collections.abc import Callable, Sequence

import cv2
import numpy as np


def _colour(rng: np.random.Generator, lo: float = 20, hi: float = 235) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Value noise (H, W, C) in about [-1, 1]: a coarse random grid upsampled with bicubic filtering."""
    gh, gw = max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))
    grid = rng.uniform(-1, 1, (gh + 1, gw + 1, channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _fractal(rng: np.random.Generator, h: int, w: int, channels: int = 1) -> np.ndarray:
    return sum(_smooth_noise(rng, h, w, 2 ** o, channels) / 1.6 ** o for o in range(1, 6)) / 1.6


def _gradient(rng, h, w) -> np.ndarray:
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * np.cos(a) + yy * np.sin(a))
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    c1, c2 = _colour(rng), _colour(rng)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return img + 12 * _smooth_noise(rng, h, w, 6, 3)


def _noise(rng, h, w) -> np.ndarray:
    n = _fractal(rng, h, w, 3)
    base = _colour(rng, 50, 200)
    return base + rng.uniform(40, 90) * n


def _shapes(rng, h, w) -> np.ndarray:
    img = np.ascontiguousarray(_gradient(rng, h, w))
    for _ in range(rng.integers(8, 40)):
        c = tuple(float(v) for v in _colour(rng))
        x, y = int(rng.uniform(-0.1, 1.1) * w), int(rng.uniform(-0.1, 1.1) * h)
        size = int(rng.uniform(0.03, 0.35) * max(h, w))
        kind = rng.integers(0, 4)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), c, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), size // 2, c, -1, cv2.LINE_AA)
        elif kind == 2:
            pts = (np.array([x, y]) + rng.normal(0, size / 2, (rng.integers(3, 7), 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], c, cv2.LINE_AA)
        else:
            cv2.ellipse(img, (x, y), (size // 2, max(1, int(size * rng.uniform(0.1, 0.5)))),
                        float(rng.uniform(0, 180)), 0, 360, c, -1, cv2.LINE_AA)
    return img


def _tiles(rng, h, w) -> np.ndarray:
    size = rng.uniform(8, 48)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:   # floor in perspective: tiles shrink towards a horizon above the image
        horizon = -rng.uniform(0.3, 2.0) * h
        depth = (yy - horizon) / (h - horizon)
        xx, yy = (xx - w / 2) / depth, 1 / depth * h * 0.5
    c1, c2 = _colour(rng), _colour(rng)
    check = ((np.floor(xx / size) + np.floor(yy / size)) % 2)[..., None]
    img = c1 * (1 - check) + c2 * check
    grout = (np.abs((xx / size) % 1 - 0.5) > 0.46) | (np.abs((yy / size) % 1 - 0.5) > 0.46)
    img[grout] = img[grout] * 0.6
    return img + 10 * _smooth_noise(rng, h, w, 16, 3)


def _street(rng, h, w) -> np.ndarray:
    horizon = int(rng.uniform(0.3, 0.65) * h)
    sky = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = _colour(rng, 120, 240) * (1 - sky) + _colour(rng, 150, 250) * sky
    img = np.ascontiguousarray(np.broadcast_to(img, (h, w, 3)).copy())
    x = int(rng.uniform(-0.2, 0) * w)
    while x < w:                            # buildings with window grids
        bw, top = int(rng.uniform(0.15, 0.45) * w), int(rng.uniform(0.0, 0.8) * horizon)
        wall = tuple(float(v) for v in _colour(rng, 40, 220))
        cv2.rectangle(img, (x, top), (x + bw, horizon), wall, -1)
        win = tuple(float(v) for v in _colour(rng, 10, 120))
        step = max(4, int(rng.uniform(0.04, 0.1) * w))
        for wx in range(x + step // 2, x + bw - step // 2, step):
            for wy in range(top + step // 2, horizon - step, step):
                cv2.rectangle(img, (wx, wy), (wx + step // 2, wy + step // 2), win, -1)
        x += bw + int(rng.uniform(0, 0.1) * w)
    ground = _colour(rng, 50, 170)
    img[horizon:] = ground + 25 * _fractal(rng, h - horizon, w, 1)
    for _ in range(rng.integers(0, 4)):     # road markings converging to the horizon
        x0 = rng.uniform(-0.5, 1.5) * w
        cv2.line(img, (int(x0), h), (int(w / 2 + (x0 - w / 2) * 0.1), horizon), (230, 230, 230),
                 int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _lines(rng, h, w) -> np.ndarray:
    img = np.ascontiguousarray(_colour(rng, 60, 220) + 20 * _fractal(rng, h, w, 3))
    for _ in range(rng.integers(10, 60)):
        p1 = (int(rng.uniform(-0.2, 1.2) * w), int(rng.uniform(-0.2, 1.2) * h))
        p2 = (int(rng.uniform(-0.2, 1.2) * w), int(rng.uniform(-0.2, 1.2) * h))
        cv2.line(img, p1, p2, tuple(float(v) for v in _colour(rng)), int(rng.integers(1, 8)), cv2.LINE_AA)
    if rng.random() < 0.5:                  # a fence or window grid
        step = int(rng.integers(10, 40))
        c = tuple(float(v) for v in _colour(rng))
        for x in range(int(rng.integers(0, step)), w, step):
            cv2.line(img, (x, 0), (x, h), c, 2)
    return img


def _bricks(rng, h, w) -> np.ndarray:
    bh = rng.uniform(6, 22)
    bw = bh * rng.uniform(1.8, 3.2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    row = np.floor(yy / bh)
    xs = xx + (row % 2) * bw / 2
    col = np.floor(xs / bw)
    base, mortar = _colour(rng, 60, 200), _colour(rng, 120, 230)
    # a random tint per brick: hash the (row, col) cell
    tint = (np.sin(row * 12.9898 + col * 78.233) * 43758.5453) % 1
    img = base * (0.8 + 0.4 * tint)[..., None]
    joint = ((yy % bh) < 1.5) | ((xs % bw) < 1.5)
    img[joint] = mortar
    return img + 12 * _smooth_noise(rng, h, w, 24, 3)


def _room(rng, h, w) -> np.ndarray:
    floor_y = int(rng.uniform(0.45, 0.75) * h)
    wall = _colour(rng, 90, 230)
    img = np.ascontiguousarray(np.broadcast_to(wall, (h, w, 3)).copy() + 8 * _smooth_noise(rng, h, w, 8, 3))
    plank = _colour(rng, 50, 180)
    yy, xx = np.mgrid[floor_y:h, 0:w].astype(np.float32)
    depth = (yy - floor_y + 4) / (h - floor_y + 4)
    u = (xx - w / 2) / depth
    stripes = 0.85 + 0.15 * np.sin(u / rng.uniform(8, 25))
    img[floor_y:] = plank * stripes[..., None]
    for _ in range(rng.integers(1, 4)):     # a door, a window, a picture
        x0, y0 = int(rng.uniform(0, 0.85) * w), int(rng.uniform(0.05, 0.6) * floor_y)
        x1, y1 = x0 + int(rng.uniform(0.08, 0.3) * w), min(floor_y, y0 + int(rng.uniform(0.15, 0.6) * h))
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(float(v) for v in _colour(rng)), -1)
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(float(v) for v in _colour(rng, 10, 90)), 2)
    cv2.line(img, (0, floor_y), (w, floor_y), tuple(float(v) for v in wall * 0.5), 2)
    return img


BACKGROUND_STYLES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "gradient": _gradient, "noise": _noise, "shapes": _shapes, "tiles": _tiles, "street": _street,
    "lines": _lines, "bricks": _bricks, "room": _room,
}
# Training and held-out families do not overlap.
TRAIN_BACKGROUNDS: tuple[str, ...] = ("gradient", "noise", "shapes", "tiles", "street")
HELDOUT_BACKGROUNDS: tuple[str, ...] = ("lines", "bricks", "room")
SPLITS: dict[str, tuple[str, ...]] = {
    "train": TRAIN_BACKGROUNDS, "heldout": HELDOUT_BACKGROUNDS, "all": tuple(BACKGROUND_STYLES),
}


def resolve_styles(styles: str | Sequence[str] | None) -> tuple[str, ...]:
    """A split name ("train", "heldout", "all"), one style, a list of styles, or None (= all)."""
    if styles is None:
        return SPLITS["all"]
    if isinstance(styles, str):
        styles = SPLITS.get(styles, (styles,))
    unknown = [s for s in styles if s not in BACKGROUND_STYLES]
    if unknown or not styles:
        raise ValueError(f"unknown background styles {unknown or styles}; expected a split in {sorted(SPLITS)} "
                         f"or styles from {sorted(BACKGROUND_STYLES)}")
    return tuple(styles)


def render_background(rng: np.random.Generator, width: int, height: int, style: str) -> np.ndarray:
    """Background of `style`: float32 (H, W, 3) in [0, 255]."""
    h, w = height, width
    return np.clip(BACKGROUND_STYLES[style](rng, h, w), 0, 255).astype(np.float32)
