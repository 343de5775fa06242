"""Still scenes of several synthetic people, and COCO keypoint datasets made of them.

Sizes are (W, H) like OpenCV and the video writer; images are (H, W, 3) uint8 RGB. Keypoints are
(P, K, 3) float32 [x, y, v] in image pixels with COCO visibility: 2 visible, 1 hidden (self-occluded,
behind another person or an object), 0 outside the image (then x = y = 0).
"""

import contextlib
import functools
import json
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.pose.keypoints import NUM_KEYPOINTS, coco_person_category
from pipeline.synthetic.appearance import Appearance, sample_appearance
from pipeline.synthetic.backgrounds import render_background, resolve_styles
from pipeline.synthetic.figures import BodyShape, View, sample_body_shape
from pipeline.synthetic.painter import Canvas
from pipeline.synthetic.parts import Figure, build_figure
from pipeline.synthetic.poses import DEG, Pose, sample_pose

logger = logging.getLogger(__name__)


@dataclass
class Person:
    """Everything needed to draw one person once; videos keep shape and look across frames."""
    shape: BodyShape
    look: Appearance
    pose: Pose
    view: View
    track_id: int = 0
    figure: Figure | None = None   # cached drawing primitives, built on first use

    def drawing(self) -> Figure:
        if self.figure is None:
            self.figure = build_figure(self.shape, self.pose, self.look, self.view)
        return self.figure


@dataclass
class SceneTruth:
    """Ground truth of a rendered scene, one row per annotated person (P of them)."""
    keypoints: np.ndarray   # (P, K, 3) float32 [x, y, v]
    boxes: np.ndarray       # (P, 4) float32 [x, y, w, h] of the drawn figure, clipped to the image
    areas: np.ndarray       # (P,) float32 pixels of the figure's silhouette inside the image
    track_ids: np.ndarray   # (P,) int64
    background: str = ""


@dataclass(frozen=True)
class CameraEffects:
    """Photometric degradations applied after painting (the same for every frame of a video)."""
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    contrast: float = 1.0
    blur_sigma: float = 0.0       # Gaussian blur in pixels, 0 = none
    motion_blur: int = 0          # length of a horizontal box blur, 0 = none
    noise_sigma: float = 0.0      # additive Gaussian noise, grey levels
    outline: float = 0.75         # factor applied to part edges (1 = no outlines)


def sample_camera_effects(rng: np.random.Generator) -> CameraEffects:
    return CameraEffects(
        gain=tuple(rng.uniform(0.85, 1.15, 3)), contrast=float(rng.uniform(0.75, 1.2)),
        blur_sigma=float(rng.uniform(0.3, 1.3)) if rng.random() < 0.5 else 0.0,
        motion_blur=int(rng.integers(3, 8)) if rng.random() < 0.1 else 0,
        noise_sigma=float(rng.uniform(0, 8)), outline=float(rng.uniform(0.55, 0.95)),
    )


def sample_light(rng: np.random.Generator) -> np.ndarray:
    """Light direction (image x, image y down, towards the viewer): from above, left or right."""
    return np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.8, -0.1), rng.uniform(0.6, 0.9)])


def sample_yaw(rng: np.random.Generator) -> float:
    """Facing: often front, back or a profile, sometimes anything in between."""
    kind = rng.choice(4, p=[0.3, 0.2, 0.38, 0.12])
    if kind == 0:
        return float(rng.normal(0, 20) * DEG)
    if kind == 1:
        return float((180 + rng.normal(0, 20)) * DEG)
    if kind == 2:
        return float((rng.choice([-90, 90]) + rng.normal(0, 25)) * DEG)
    return float(rng.uniform(-np.pi, np.pi))


def apply_camera_effects(image: np.ndarray, fx: CameraEffects, rng: np.random.Generator) -> np.ndarray:
    """float32 (H, W, 3) -> uint8 (H, W, 3): colour cast, contrast, blur and sensor noise."""
    img = image * np.asarray(fx.gain, dtype=np.float32)
    img = (img - 128) * fx.contrast + 128
    if fx.blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), fx.blur_sigma)
    if fx.motion_blur > 1:
        img = cv2.blur(img, (fx.motion_blur, 1))
    if fx.noise_sigma > 0:
        # triangular noise (sum of two uniforms) with the given sigma: near-Gaussian and much cheaper
        u = rng.random(img.shape, dtype=np.float32) + rng.random(img.shape, dtype=np.float32) - 1.0
        img = img + u * np.float32(fx.noise_sigma * np.sqrt(6.0))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _paint_occluder(canvas: Canvas, rng: np.random.Generator, near: np.ndarray) -> None:
    """A pole, box or bush in front of part of a figure (near = its extent [x0, y0, x1, y1])."""
    s = canvas.scale
    x0, y0, x1, y1 = near
    w, h = x1 - x0, y1 - y0
    mask = np.zeros(canvas.labels.shape, dtype=np.uint8)
    cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
    if rng.random() < 0.5:   # vertical pole or a box rising from the bottom
        half = rng.uniform(0.05, 0.25) * w
        top = cy if rng.random() < 0.6 else -1
        cv2.rectangle(mask, (int((cx - half) * s), int(top * s)), (int((cx + half) * s), mask.shape[0]), 1, -1)
    else:
        axes = (int(rng.uniform(0.15, 0.5) * w * s), int(rng.uniform(0.1, 0.3) * h * s))
        cv2.ellipse(mask, (int(cx * s), int(cy * s)), axes, 0, 0, 360, 1, -1)
    colour = rng.uniform(20, 230, 3).astype(np.float32)
    canvas.paint_occluder(mask.astype(bool), colour)


def paint_people(background: np.ndarray, people: Sequence[Person], rng: np.random.Generator,
                 effects: CameraEffects, light: np.ndarray, supersample: int = 2,
                 occluder_p: float = 0.0, style: str = "") -> tuple[np.ndarray, SceneTruth]:
    """Paint people far to near (larger feet y = nearer) over a background (H, W, 3) float32.

    Returns the uint8 (H, W, 3) image after camera effects and the truth of every person with at least one
    keypoint inside the image (others are drawn but not annotated).
    """
    canvas = Canvas(background, supersample, light)
    order = sorted(range(len(people)), key=lambda i: (people[i].view.y, i))
    figures = []
    for i in order:
        figures.append(people[i].drawing())
        canvas.paint_figure(figures[-1])
    if figures and rng.random() < occluder_p:
        _paint_occluder(canvas, rng, figures[int(rng.integers(len(figures)))].extent())
    canvas.outline(effects.outline)
    kps, boxes, areas, ids = [], [], [], []
    for j, i in enumerate(order):
        kp = canvas.visibility(j)
        if not (kp[:, 2] > 0).any():
            continue
        box, area = canvas.silhouette(j)
        if area <= 0:
            continue
        kps.append(kp)
        boxes.append(box)
        areas.append(area)
        ids.append(people[i].track_id)
    image = apply_camera_effects(canvas.result(), effects, rng)
    truth = SceneTruth(
        keypoints=np.array(kps, dtype=np.float32).reshape(-1, NUM_KEYPOINTS, 3),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4), areas=np.array(areas, dtype=np.float32),
        track_ids=np.array(ids, dtype=np.int64), background=style)
    return image, truth


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def sample_people(rng: np.random.Generator, size: tuple[int, int], count: int,
                  person_height: tuple[float, float], max_overlap: float = 0.4) -> list[Person]:
    """Random people placed in a (W, H) image, log-uniform heights, limited mutual bbox overlap."""
    w, h = size
    people, boxes = [], []
    lo, hi = np.log(person_height[0]), np.log(person_height[1])
    for _ in range(count):
        for _attempt in range(8):
            height = float(np.exp(rng.uniform(lo, hi)))
            # mostly inside the frame; sometimes cut by an edge; people taller than the frame show their top
            cut = rng.random() < 0.2
            x = rng.uniform(-0.1, 1.1) * w if cut else rng.uniform(0.1, 0.9) * w
            top_lo = -(0.5 if cut else 0.12) * height
            top = rng.uniform(top_lo, max(top_lo, h - 0.92 * height))
            view = View(yaw=sample_yaw(rng), pitch=float(rng.uniform(-8, 20) * DEG),
                        distance=float(rng.uniform(3, 12)), x=float(x), y=float(top + height), height=height)
            person = Person(sample_body_shape(rng), sample_appearance(rng), sample_pose(rng), view)
            box = person.drawing().extent()
            if all(_box_iou(box, b) <= max_overlap for b in boxes):
                people.append(person)
                boxes.append(box)
                break
    return people


def render_scene_with_truth(
    rng: np.random.Generator, size: tuple[int, int] = (256, 256), num_people: int | tuple[int, int] = (1, 4),
    background: str | Sequence[str] | None = None, person_height: tuple[float, float | None] = (40.0, None),
    supersample: int = 2, max_overlap: float = 0.4, occluder_p: float = 0.15, effects: bool = True,
) -> tuple[np.ndarray, SceneTruth]:
    """render_scene, also returning boxes, areas and the background style (see render_scene)."""
    w, h = size
    styles = resolve_styles(background)
    lo_n, hi_n = (num_people, num_people) if isinstance(num_people, int) else num_people
    if lo_n < 0 or hi_n < lo_n:
        raise ValueError(f"num_people must be n >= 0 or (lo, hi) with 0 <= lo <= hi, got {num_people}")
    heights = (person_height[0], person_height[1] or 1.15 * h)
    style = str(rng.choice(styles))
    bg = render_background(rng, w, h, style)
    people = sample_people(rng, size, int(rng.integers(lo_n, hi_n + 1)), heights, max_overlap)
    fx = sample_camera_effects(rng) if effects else CameraEffects(outline=0.75)
    return paint_people(bg, people, rng, fx, sample_light(rng), supersample, occluder_p, style)


def render_scene(
    rng: np.random.Generator, size: tuple[int, int] = (256, 256), num_people: int | tuple[int, int] = (1, 4),
    background: str | Sequence[str] | None = None, person_height: tuple[float, float | None] = (40.0, None),
    supersample: int = 2, max_overlap: float = 0.4, occluder_p: float = 0.15, effects: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image of 0..N articulated people and their COCO keypoints.

    Args:
        rng: the only source of randomness; the same generator state gives the same scene.
        size: (W, H) of the image.
        num_people: an exact count or an inclusive (lo, hi) range; people that end up with no keypoint
            inside the image are drawn but not annotated.
        background: a split ("train", "heldout", "all"), one style name, a list of styles, or None (all);
            see backgrounds.BACKGROUND_STYLES.
        person_height: (min, max) standing height in pixels, sampled log-uniformly; max None = 1.15 * H.
        supersample: integer anti-aliasing factor of the painter.
        max_overlap: largest bbox IoU between two people when placing them.
        occluder_p: chance of a non-person object in front of someone.
        effects: colour cast, blur and noise.
    Returns:
        image (H, W, 3) uint8 RGB; keypoints (P, K, 3) float32 [x, y, v].
    """
    image, truth = render_scene_with_truth(rng, size, num_people, background, person_height, supersample,
                                           max_overlap, occluder_p, effects)
    return image, truth.keypoints


def coco_annotation(ann_id: int, image_id: int, keypoints: np.ndarray, box: np.ndarray, area: float) -> dict:
    """One COCO person annotation from (K, 3) keypoints (outside ones as 0, 0, 0)."""
    kp = np.where(keypoints[:, 2:3] > 0, keypoints, 0.0)
    return {
        "id": ann_id, "image_id": image_id, "category_id": coco_person_category()["id"],
        "keypoints": [round(float(v), 2) for v in kp.reshape(-1)],
        "num_keypoints": int((kp[:, 2] > 0).sum()),
        "bbox": [round(float(v), 2) for v in box], "area": round(float(area), 2), "iscrowd": 0,
    }


def write_coco_dataset(
    out_dir: str | Path, num_images: int, seed: int, image_size: tuple[int, int] = (256, 256),
    num_people: int | tuple[int, int] = (1, 4), background: str | Sequence[str] | None = None,
    min_keypoint_area: float = 32.0 ** 2, jpeg_quality: int = 92, workers: int = 1, **scene_kwargs,
) -> Path:
    """Render `num_images` scenes to out_dir/images/000000.jpg... and out_dir/annotations.json (COCO).

    Image i depends only on (seed, i), so datasets with different seeds do not share images, any image can be
    regenerated alone, and `workers` processes (spawned, each rendering a share of the images) write exactly what
    one process writes. Image ids are i + 1; annotation ids count from 1.
    People whose silhouette area is below `min_keypoint_area` pixels keep their bbox and area but get
    no keypoints (num_keypoints 0), as in COCO where small people are not keypoint-annotated: COCOeval
    ignores them, and a trainer can mask their boxes out of the loss. 0 annotates everyone.
    Extra keyword arguments go to render_scene (person_height, supersample, occluder_p, ...).
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    render = functools.partial(_write_image, out, seed, tuple(image_size), num_people, background, jpeg_quality,
                               scene_kwargs)
    images, annotations = [], []
    with contextlib.ExitStack() as stack:
        if workers > 1 and num_images > 1:  # spawned: no fork of a parent that may hold torch or Ray threads
            pool = stack.enter_context(ProcessPoolExecutor(min(workers, num_images),
                                                           mp_context=multiprocessing.get_context("spawn")))
            rendered = pool.map(render, range(num_images), chunksize=max(1, num_images // (8 * workers)))
        else:
            rendered = map(render, range(num_images))
        for image, people in rendered:
            images.append(image)
            for kp, box, area in people:
                kp = kp if area >= min_keypoint_area else np.zeros_like(kp)
                annotations.append(coco_annotation(len(annotations) + 1, image["id"], kp, box, area))
    doc = {
        "info": {"description": "posepipe synthetic people", "seed": seed, "background": background,
                 "min_keypoint_area": min_keypoint_area},
        "images": images, "annotations": annotations, "categories": [coco_person_category()],
    }
    path = out / "annotations.json"
    path.write_text(json.dumps(doc))
    logger.info("wrote %d images, %d people to %s", len(images), len(annotations), out)
    return path


def _write_image(out: Path, seed: int, image_size: tuple[int, int], num_people, background, jpeg_quality: int,
                 scene_kwargs: dict, i: int) -> tuple[dict, list[tuple[np.ndarray, np.ndarray, float]]]:
    """Render and write image i of a dataset; returns its COCO image record and its people (keypoints, box, area)."""
    rng = np.random.default_rng([seed, i])
    image, truth = render_scene_with_truth(rng, image_size, num_people, background, **scene_kwargs)
    name = f"{i:06d}.jpg"
    cv2.imwrite(str(out / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    w, h = image_size
    record = {"id": i + 1, "file_name": name, "width": w, "height": h, "background": truth.background}
    return record, list(zip(truth.keypoints, truth.boxes, (float(a) for a in truth.areas)))
