"""Per-person palettes and procedural cloth textures.

A texture is evaluated at body-anchored coordinates (u, v) = (pixel - figure origin) / figure height, so a
striped shirt keeps its stripes while the person walks and they scale with the person.
"""

from dataclasses import dataclass

import numpy as np

# Skin tones from light to dark (RGB), sampled by interpolation so every shade in between occurs.
SKIN_TONES = np.array([[255, 228, 206], [241, 194, 160], [224, 172, 125], [198, 134, 90],
                       [160, 105, 68], [120, 74, 44], [82, 50, 32]], dtype=np.float32)
HAIR_COLOURS = np.array([[20, 16, 14], [45, 30, 20], [85, 55, 35], [140, 95, 55], [200, 165, 110],
                         [150, 60, 30], [160, 160, 160], [230, 230, 225]], dtype=np.float32)
HAIR_P = np.array([0.3, 0.22, 0.15, 0.1, 0.09, 0.04, 0.06, 0.04])


@dataclass(frozen=True)
class Texture:
    kind: str                     # plain | stripes | checker | dots | noise
    colour: tuple[float, float, float]
    colour2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    period: float = 0.05          # in figure heights
    angle: float = 0.0            # radians, stripe direction
    phase: float = 0.0
    waves: tuple[tuple[float, float, float, float], ...] = ()   # (fu, fv, phase, amp) for "noise"

    def sample(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Colours (N, 3) float32 at body-anchored coordinates u, v of shape (N,)."""
        c1 = np.asarray(self.colour, dtype=np.float32)
        if self.kind == "plain":
            return np.broadcast_to(c1, (u.size, 3)).copy()
        c2 = np.asarray(self.colour2, dtype=np.float32)
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        a = 2 * np.pi * (u * ca + v * sa) / self.period + self.phase
        if self.kind == "stripes":
            w = np.clip(np.sin(a) * 3 + 0.5, 0, 1)
        elif self.kind == "checker":
            b = 2 * np.pi * (-u * sa + v * ca) / self.period
            w = np.clip(np.sin(a) * np.sin(b) * 4 + 0.5, 0, 1)
        elif self.kind == "dots":
            b = 2 * np.pi * (-u * sa + v * ca) / self.period
            w = np.clip((np.sin(a) * np.sin(b) - 0.55) * 6, 0, 1)
        elif self.kind == "noise":
            m = sum(amp * np.sin(2 * np.pi * (fu * u + fv * v) + ph) for fu, fv, ph, amp in self.waves)
            return (c1[None] * (1 + m)[:, None]).astype(np.float32)
        else:
            raise ValueError(f"unknown texture kind {self.kind!r}; expected plain, stripes, checker, dots or noise")
        w = w.astype(np.float32)[:, None]
        return c1[None] * (1 - w) + c2[None] * w


@dataclass(frozen=True)
class Appearance:
    """How one person looks; kept constant across the frames of a video."""
    skin: Texture
    hair: Texture
    shirt: Texture
    pants: Texture
    shoes: Texture
    long_sleeves: bool = True
    long_pants: bool = True
    skirt: bool = False
    hair_style: str = "short"     # short | long | bald

    def material(self, name: str) -> Texture:
        if name == "sleeve":
            return self.shirt if self.long_sleeves else self.skin
        if name == "lower_leg":
            return self.pants if self.long_pants else self.skin
        return getattr(self, name)


def _hsv_colour(rng: np.random.Generator) -> np.ndarray:
    """A clothing colour: often muted or dark, sometimes saturated."""
    h = rng.uniform(0, 1)
    s = rng.choice([rng.uniform(0, 0.25), rng.uniform(0.25, 0.9)], p=[0.45, 0.55])
    v = rng.choice([rng.uniform(0.12, 0.45), rng.uniform(0.45, 1.0)], p=[0.4, 0.6])
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255


def _cloth(rng: np.random.Generator, plain_p: float = 0.45) -> Texture:
    c1 = _hsv_colour(rng)
    kind = rng.choice(["plain", "stripes", "checker", "dots", "noise"],
                      p=[plain_p, (1 - plain_p) * 0.35, (1 - plain_p) * 0.2, (1 - plain_p) * 0.1,
                         (1 - plain_p) * 0.35])
    c2 = _hsv_colour(rng) if rng.random() < 0.6 else np.clip(c1 * rng.uniform(0.4, 1.6), 0, 255)
    waves = tuple((rng.normal(0, 25), rng.normal(0, 25), rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.1))
                  for _ in range(3))
    angle = rng.choice([np.pi / 2, 0.0, rng.uniform(0, np.pi)], p=[0.6, 0.2, 0.2])
    return Texture(str(kind), tuple(c1), tuple(c2), period=float(rng.uniform(0.015, 0.07)),
                   angle=float(angle), phase=float(rng.uniform(0, 2 * np.pi)), waves=waves)


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """A random but plausible palette: skin tone, hair, shirt, trousers or skirt, shoes."""
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    skin = SKIN_TONES[i] * (1 - (t - i)) + SKIN_TONES[i + 1] * (t - i)
    skin = np.clip(skin * rng.uniform(0.92, 1.05, 3), 0, 255)
    hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_P)] * rng.uniform(0.85, 1.15)
    hair_waves = tuple((rng.normal(0, 40), rng.normal(0, 10), rng.uniform(0, 6.3), 0.08) for _ in range(2))
    shoes = _hsv_colour(rng) * (rng.uniform(0.2, 0.6) if rng.random() < 0.7 else 1.0)
    skirt = rng.random() < 0.12
    return Appearance(
        skin=Texture("plain", tuple(skin)),
        hair=Texture("noise", tuple(np.clip(hair, 0, 255)), waves=hair_waves),
        shirt=_cloth(rng), pants=_cloth(rng, plain_p=0.75), shoes=Texture("plain", tuple(shoes)),
        long_sleeves=bool(rng.random() < 0.6), long_pants=bool(rng.random() < (0.4 if skirt else 0.75)),
        skirt=skirt, hair_style=str(rng.choice(["short", "long", "bald"], p=[0.55, 0.37, 0.08])),
    )
