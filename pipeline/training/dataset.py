"""COCO keypoint data as training samples: images warped into the model input, heatmap and PAF targets at stride 4.

A data root is a directory or fsspec URI holding `annotations.json` (COCO keypoint format) and `images/` (or a path
to the JSON itself, images in the `images/` folder beside it). Two transforms share one code path:

- train: a letterbox fit into a `fit_size` square (default: the input size) composed with a random scale / rotation /
  translation (and an optional horizontal flip), applied as ONE `cv2.warpAffine`, plus colour jitter. A flip mirrors
  x and swaps left/right keypoints (FLIP_INDEX). With fit_size > input_size the input is a (random) crop of the
  fitted image, so a net trained on 192 px crops sees people at the same pixel size as at 256 px inference.
- eval: the deterministic `Letterbox` of inference, so predictions map back to original pixels with
  `Letterbox.fit(width, height, input_size).to_image`.

Shape letters: S = input size, K keypoints, L limbs, M = padded people slots per sample.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.pose.heatmaps import encode_heatmaps, input_to_heatmap
from pipeline.pose.keypoints import FLIP_INDEX, NUM_KEYPOINTS, SKELETON
from pipeline.pose.letterbox import Letterbox, normalize
from pipeline.pose.pafs import encode_pafs
from pipeline.storage import is_local, join, resolve

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentConfig:
    """Random training augmentation; each range is symmetric around no change."""

    scale: float = 0.25        # zoom factor drawn from [1 - scale, 1 + scale]
    rotation: float = 30.0     # degrees, drawn from [-rotation, rotation]
    translate: float = 0.15    # shift drawn from [-translate, translate] * input size, per axis
    flip: float = 0.5          # probability of a horizontal flip (with left/right swap)
    brightness: float = 0.2    # additive, fraction of 255
    contrast: float = 0.2      # multiplicative around the mean, [1 - c, 1 + c]
    saturation: float = 0.2    # blend with grey, [1 - s, 1 + s]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TargetConfig:
    """How keypoints become training targets."""

    stride: int = 4            # heatmap stride of PoseNet
    sigma: float = 2.0         # Gaussian std, heatmap pixels
    limb_width: float = 1.0    # PAF half-width, heatmap pixels
    max_people: int = 20       # M, slots for the returned keypoints (extra people still shape the targets)


def read_coco(root: str, storage_options: dict | None = None) -> tuple[dict, str]:
    """Load a COCO keypoint dict; returns (dict, images directory URI)."""
    json_uri = root if root.endswith(".json") else join(root, "annotations.json")
    fs, path = resolve(json_uri, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"no COCO annotations at {json_uri}; expected a directory with annotations.json "
                                f"and images/, or the path of the JSON file")
    with fs.open(path, "rb") as f:
        coco = json.load(f)
    for key in ("images", "annotations"):
        if key not in coco:
            raise ValueError(f"{json_uri} is not a COCO keypoint file: it has no {key!r} list")
    base = json_uri.rsplit("/", 1)[0] if "/" in json_uri else "."
    return coco, join(base, "images")


class CocoKeypointDataset(Dataset):
    """One sample per image (all its people), for bottom-up training and evaluation.

    Each item is a dict:
        image: (3, S, S) float32, normalised (`pipeline.pose.letterbox.normalize`).
        heatmaps: (K, S/4, S/4) float32; pafs: (2L, S/4, S/4) float32.
        keypoints: (M, K, 3) float32 [x, y, v] in input pixels after the transform; empty slots are NaN with v = 0.
        image_id: () int64; orig_size: (2,) int64 [width, height] of the original image.
    """

    def __init__(self, root: str, input_size: int = 256, augment: AugmentConfig | None = None,
                 targets: TargetConfig = TargetConfig(), storage_options: dict | None = None,
                 limit: int | None = None, fit_size: int | None = None):
        if input_size % targets.stride:
            raise ValueError(f"input_size {input_size} must be a multiple of the stride {targets.stride}")
        self.root = root
        self.input_size = input_size
        self.fit_size = fit_size or input_size
        self.augment = augment
        self.targets = targets
        self.storage_options = storage_options
        self.coco, self.images_uri = read_coco(root, storage_options)
        self.images = list(self.coco["images"])[:limit]
        people: dict[int, list] = defaultdict(list)
        for ann in self.coco["annotations"]:
            if not ann.get("iscrowd", 0):
                people[ann["image_id"]].append(ann["keypoints"])
        self.people = {img["id"]: np.asarray(people[img["id"]], dtype=np.float32).reshape(-1, NUM_KEYPOINTS, 3)
                       for img in self.images}
        self._fs = None

    def ground_truth(self) -> dict:
        """The COCO dict restricted to this dataset's images (what its predictions are scored against)."""
        ids = {img["id"] for img in self.images}
        return {**self.coco, "images": self.images,
                "annotations": [a for a in self.coco["annotations"] if a["image_id"] in ids]}

    def __len__(self) -> int:
        return len(self.images)

    def read_image(self, index: int) -> np.ndarray:
        """Original image `index` as (H, W, 3) uint8 RGB."""
        uri = join(self.images_uri, self.images[index]["file_name"])
        if self._fs is None:  # resolved lazily: DataLoader workers each open their own filesystem
            self._fs, _ = resolve(self.images_uri, self.storage_options)
        _, path = resolve(uri, self.storage_options)
        if is_local(self._fs):
            bgr = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.exists(path) else None
        else:
            bgr = cv2.imdecode(np.frombuffer(self._fs.cat_file(path), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {uri} (listed in {self.root}); is the images/ folder "
                                    f"complete?")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.read_image(index)
        height, width = image.shape[:2]
        keypoints = self.people[self.images[index]["id"]].copy()  # (N, K, 3) image pixels, COCO 0,0,0 = missing
        keypoints[keypoints[..., 2] <= 0] = (np.nan, np.nan, 0.0)
        if self.augment is None:
            letterbox = Letterbox.fit(width, height, self.input_size)
            warped = letterbox.apply(image)
            keypoints[..., :2] = letterbox.to_input(keypoints[..., :2])
        else:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))  # per-worker torch seed
            matrix, flipped = sample_affine(rng, width, height, self.input_size, self.augment, self.fit_size)
            warped = cv2.warpAffine(image, matrix[:2], (self.input_size, self.input_size),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            keypoints = transform_keypoints(keypoints, matrix, flipped)
            warped = jitter_colour(rng, warped, self.augment)
        keypoints = hide_outside(keypoints, self.input_size)
        heatmaps, pafs = encode_targets(keypoints, self.input_size, self.targets)
        return {
            "image": normalize(torch.from_numpy(warped)[None])[0],  # (3, S, S)
            "heatmaps": torch.from_numpy(heatmaps),  # (K, S/4, S/4)
            "pafs": torch.from_numpy(pafs),  # (2L, S/4, S/4)
            "keypoints": torch.from_numpy(pad_people(keypoints, self.targets.max_people)),  # (M, K, 3)
            "image_id": torch.tensor(self.images[index]["id"], dtype=torch.int64),
            "orig_size": torch.tensor([width, height], dtype=torch.int64),
        }


def encode_targets(keypoints: np.ndarray, input_size: int, targets: TargetConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, 3) keypoints in input pixels -> heatmaps (K, S/4, S/4) and PAFs (2L, S/4, S/4)."""
    size = (input_size // targets.stride, input_size // targets.stride)
    in_heatmap = keypoints.copy()
    in_heatmap[..., :2] = input_to_heatmap(keypoints[..., :2], targets.stride)
    return (encode_heatmaps(in_heatmap, size, targets.sigma),
            encode_pafs(in_heatmap, size, SKELETON, targets.limb_width))


def sample_affine(rng: np.random.Generator, width: int, height: int, size: int, augment: AugmentConfig,
                  fit_size: int | None = None) -> tuple[np.ndarray, bool]:
    """A random 3x3 map from original pixels to input pixels: letterbox fit into a `fit_size` square centred on the
    input, then zoom/rotate/shift about the input centre, then maybe a mirror. Pixel centres are at integers on both
    sides (cv2.warpAffine's convention)."""
    fit_size = fit_size or size
    box = Letterbox.fit(width, height, fit_size)
    offset = (size - fit_size) / 2.0  # centres the fitted square on the input
    fit = np.array([[box.scale_x, 0, 0.5 * box.scale_x - 0.5 + box.pad_x + offset],
                    [0, box.scale_y, 0.5 * box.scale_y - 0.5 + box.pad_y + offset],
                    [0, 0, 1]])
    zoom = rng.uniform(1 - augment.scale, 1 + augment.scale)
    angle = math.radians(rng.uniform(-augment.rotation, augment.rotation))
    shift = rng.uniform(-augment.translate, augment.translate, size=2) * size
    centre = (size - 1) / 2.0
    cos, sin = zoom * math.cos(angle), zoom * math.sin(angle)
    about_centre = np.array([[cos, -sin, centre + shift[0] - cos * centre + sin * centre],
                             [sin, cos, centre + shift[1] - sin * centre - cos * centre],
                             [0, 0, 1]])
    flipped = bool(rng.random() < augment.flip)
    mirror = np.array([[-1.0, 0, size - 1], [0, 1, 0], [0, 0, 1]]) if flipped else np.eye(3)
    return mirror @ about_centre @ fit, flipped


def transform_keypoints(keypoints: np.ndarray, matrix: np.ndarray, flipped: bool) -> np.ndarray:
    """Apply a 3x3 affine to (N, K, 3) keypoints; a mirror also swaps left/right so labels follow the body."""
    out = keypoints.copy()
    out[..., :2] = keypoints[..., :2] @ matrix[:2, :2].T + matrix[:2, 2]
    return out[:, list(FLIP_INDEX)] if flipped else out


def hide_outside(keypoints: np.ndarray, size: int) -> np.ndarray:
    """Mark keypoints that left the input square as missing (NaN, v = 0)."""
    out = keypoints.copy()
    xy = out[..., :2]
    inside = np.all((xy >= -0.5) & (xy <= size - 0.5), axis=-1)  # NaN compares False
    out[~inside] = (np.nan, np.nan, 0.0)
    return out


def jitter_colour(rng: np.random.Generator, image: np.ndarray, augment: AugmentConfig) -> np.ndarray:
    """Random brightness, contrast and saturation of a (H, W, 3) uint8 RGB image."""
    img = image.astype(np.float32)
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
    img = grey[..., None] + (img - grey[..., None]) * rng.uniform(1 - augment.saturation, 1 + augment.saturation)
    img = img.mean() + (img - img.mean()) * rng.uniform(1 - augment.contrast, 1 + augment.contrast)
    img = img + 255.0 * rng.uniform(-augment.brightness, augment.brightness)
    return np.clip(img, 0, 255).astype(np.uint8)


def pad_people(keypoints: np.ndarray, slots: int) -> np.ndarray:
    """(N, K, 3) -> (M, K, 3) float32: the first M people, empty slots NaN with v = 0."""
    out = np.full((slots, NUM_KEYPOINTS, 3), np.nan, np.float32)
    out[..., 2] = 0.0
    n = min(slots, len(keypoints))
    out[:n] = keypoints[:n]
    return out
