"""Videos of synthetic people who walk, turn, cross and enter or leave the frame, with identity ground truth.

Each person keeps body shape and palette for the whole clip. People stand on a ground plane seen in
perspective: feet lower in the frame are nearer, so taller and painted later. The ground truth is a JSON
sidecar next to the video (same stem, .json) with per-frame keypoints, boxes and track ids.
"""

import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.pose.keypoints import coco_person_category
from pipeline.synthetic.appearance import Appearance, sample_appearance
from pipeline.synthetic.backgrounds import render_background, resolve_styles
from pipeline.synthetic.figures import BodyShape, View, sample_body_shape
from pipeline.synthetic.poses import DEG, Pose, clip_pose, walk_pose
from pipeline.synthetic.scenes import CameraEffects, Person, coco_annotation, paint_people, sample_light

logger = logging.getLogger(__name__)

SCENARIOS = ("walk", "cross", "enter_exit", "mixed")
# container extension -> (codec, encoder options); every codec here is decoded by decord's FFmpeg
CODECS: dict[str, tuple[str, dict[str, str]]] = {
    ".mp4": ("libx264", {"crf": "20", "preset": "veryfast"}),
    ".mkv": ("libx264", {"crf": "20", "preset": "veryfast"}),
    ".mov": ("libx264", {"crf": "20", "preset": "veryfast"}),
    ".avi": ("mpeg4", {"qscale": "3"}),
    ".webm": ("libvpx-vp9", {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
}
GAIT_CYCLE = 0.82      # body heights travelled per gait cycle (two steps)
TURN_SECONDS = 1.0


@dataclass
class Walker:
    """The plan of one person: where they start, how they move, and when they turn."""
    track_id: int
    shape: BodyShape
    look: Appearance
    x: float                      # ground point at frame `start`, pixels
    y: float
    direction: int                # +1 walks to the image right, -1 to the left
    speed: float                  # body heights per second; 0 stands still
    start: int = 0                # frame at which walking begins (before it the person waits at x)
    turn_at: int | None = None    # frame at which a 180 degree turn starts
    turn_via_front: bool = True
    drift: float = 0.0            # vertical ground motion, pixels per frame (+ = towards the camera)
    wave: bool = False            # stands and waves instead of walking
    phase: float = 0.0            # gait phase at the start


@dataclass(frozen=True)
class Ground:
    """Perspective of the ground plane: a person whose feet are at row y is height_at(y) pixels tall."""
    horizon: float                # image row of the horizon
    bottom_height: float          # height of a person standing on the bottom image row
    frame_height: int

    def height_at(self, y: float) -> float:
        return max(self.bottom_height * (y - self.horizon) / (self.frame_height - self.horizon), 8.0)

    def row_for_height(self, height: float) -> float:
        return self.horizon + height / self.bottom_height * (self.frame_height - self.horizon)


def _wave_pose(t: float, rng_phase: float) -> Pose:
    swing = np.sin(2 * np.pi * 1.3 * t + rng_phase)
    return clip_pose(Pose(
        shoulder_flex=np.array([10.0, 5.0]) * DEG, shoulder_abd=np.array([120 + 15 * swing, 10]) * DEG,
        arm_twist=np.array([-20.0, 10.0]) * DEG, elbow=np.array([50 + 35 * swing, 15]) * DEG,
        hip_abd=np.array([6.0, 6.0]) * DEG, knee=np.array([4.0, 4.0]) * DEG, head_roll=4 * swing * DEG))


def simulate(walker: Walker, ground: Ground, num_frames: int, fps: float, camera_pitch: float) -> list[Person]:
    """The person in every frame: position, facing, gait pose. Deterministic given the plan."""
    people = []
    x, y, phase, direction = walker.x, walker.y, walker.phase, walker.direction
    turn_frames = int(round(TURN_SECONDS * fps))
    for t in range(num_frames):
        h = ground.height_at(y)
        sec = t / fps
        if walker.wave:
            yaw = walker.direction * 25 * DEG
            pose = _wave_pose(sec, walker.phase)
        else:
            speed = walker.speed if t >= walker.start else 0.0
            turn = 0.0 if walker.turn_at is None else np.clip((t - walker.turn_at) / max(turn_frames, 1), 0, 1)
            if 0 < turn < 1:
                speed *= abs(np.cos(np.pi * turn))            # slow down, turn on the spot, speed up
            if walker.turn_at is not None and t == walker.turn_at + turn_frames // 2:
                direction = -direction
            # facing: the walking direction, bent towards the camera when moving down the frame
            vz = 3.0 * walker.drift * fps / h
            yaw = np.arctan2(walker.direction * max(walker.speed, 0.2), vz)
            if walker.turn_at is not None:
                sweep = (-1 if walker.turn_via_front == (walker.direction > 0) else 1) * np.pi
                yaw = yaw + sweep * (0.5 - 0.5 * np.cos(np.pi * turn))
            x += direction * speed * h / fps
            y += walker.drift * (speed > 0)
            phase += 2 * np.pi * speed / fps / GAIT_CYCLE
            pose = walk_pose(phase, stride=min(speed / 0.75, 1.3), run=walker.speed > 1.6)
            pose.head_yaw = 20 * DEG * np.sin(0.7 * sec + walker.phase)
        view = View(yaw=float(yaw), pitch=camera_pitch, distance=8.0, x=float(x), y=float(y), height=h)
        people.append(Person(walker.shape, walker.look, pose, view, walker.track_id))
    return people


def _walker(rng, track_id, ground, size, **kw) -> Walker:
    w, h = size
    y = kw.pop("y", None)
    if y is None:
        y = ground.row_for_height(rng.uniform(0.35, 1.0) * ground.bottom_height)
    base = dict(x=rng.uniform(0.1, 0.9) * w, direction=int(rng.choice([-1, 1])), speed=rng.uniform(0.5, 0.9),
                drift=rng.uniform(-0.3, 0.3), phase=rng.uniform(0, 2 * np.pi), turn_via_front=rng.random() < 0.5)
    base.update(kw)
    return Walker(track_id, sample_body_shape(rng), sample_appearance(rng), y=min(y, h + 0.1 * h), **base)


def plan_scenario(rng: np.random.Generator, scenario: str, num_people: int, size: tuple[int, int],
                  ground: Ground, num_frames: int, fps: float) -> list[Walker]:
    """Walkers for one of SCENARIOS in a (W, H) frame."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")
    w, h = size
    walkers: list[Walker] = []
    ids = iter(range(1, num_people + 1))
    if scenario == "walk":
        walkers = [_walker(rng, next(ids), ground, size) for _ in range(num_people)]
        if walkers and rng.random() < 0.7:
            walkers[int(rng.integers(len(walkers)))].turn_at = int(rng.uniform(0.2, 0.5) * num_frames)
    elif scenario == "cross":
        mid = num_frames / 2
        y0 = ground.row_for_height(rng.uniform(0.45, 0.85) * ground.bottom_height)
        for i in range(num_people):
            d = 1 if i % 2 == 0 else -1
            y = min(y0 + (i % 2) * rng.uniform(0.02, 0.08) * h + (i // 2) * 0.1 * h, h - 2)
            speed = rng.uniform(0.55, 0.9)
            meet = w * rng.uniform(0.4, 0.6)
            x = meet - d * speed * ground.height_at(y) * mid / fps     # reach `meet` half way through
            walkers.append(_walker(rng, next(ids), ground, size, x=x, y=y, direction=d, speed=speed, drift=0.0))
    elif scenario == "enter_exit":
        for _ in range(num_people):
            walker = _walker(rng, next(ids), ground, size)
            hh = ground.height_at(walker.y)
            walker.x = -0.4 * hh if walker.direction > 0 else w + 0.4 * hh
            walker.start = int(rng.uniform(0, 0.35) * num_frames)
            crossing = rng.uniform(0.45, 0.75) * num_frames / fps       # seconds to cross the frame
            walker.speed = float((w + 0.8 * hh) / hh / crossing)
            walker.drift = 0.0
            walkers.append(walker)
    else:  # mixed: someone waving, someone crossing the frame, the rest walking about
        kinds = ["wave", "enter"] + ["walk"] * max(0, num_people - 2)
        for kind in kinds[:num_people]:
            walker = _walker(rng, next(ids), ground, size)
            if kind == "wave":
                walker.wave, walker.speed = True, 0.0
            elif kind == "enter":
                hh = ground.height_at(walker.y)
                walker.x = -0.4 * hh if walker.direction > 0 else w + 0.4 * hh
                walker.speed = float((w + 0.8 * hh) / hh / (rng.uniform(0.6, 0.9) * num_frames / fps))
            walkers.append(walker)
    return walkers


def _container_codec(path: Path, size: tuple[int, int]) -> tuple[str, dict[str, str]]:
    ext = path.suffix.lower()
    if ext not in CODECS:
        raise ValueError(f"unsupported video extension {ext!r} for {path}; expected one of {sorted(CODECS)}")
    w, h = size
    if w % 2 or h % 2:
        raise ValueError(f"video size must be even for yuv420p, got (W, H) = {size}; use e.g. ({w + w % 2}, "
                         f"{h + h % 2})")
    return CODECS[ext]


def _encoder_opens(codec: str, size: tuple[int, int], rate: Fraction) -> bool:
    """Can this process open `codec`? libvpx fails to when decord's bundled, decode-only libvpx was loaded first."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height = size
    ctx.pix_fmt, ctx.time_base = "yuv420p", 1 / rate
    try:
        ctx.open()
    except av.error.FFmpegError:
        return False
    return True


# Re-encodes a lossless intermediate in a fresh interpreter that has not loaded decord's libraries.
_TRANSCODE = """
import sys, json, av
src, dst, codec, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with av.open(src) as inp, av.open(dst, mode="w") as out:
    vin = inp.streams.video[0]
    stream = out.add_stream(codec, rate=vin.average_rate, options=options)
    stream.width, stream.height, stream.pix_fmt = vin.width, vin.height, "yuv420p"
    stream.codec_context.time_base = 1 / vin.average_rate
    for t, frame in enumerate(inp.decode(vin)):
        frame.pts, frame.time_base = t, 1 / vin.average_rate
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
"""


def _encode(path: Path, frames, rate: Fraction, size: tuple[int, int], codec: str, options: dict) -> int:
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / rate
        for t, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = t, 1 / rate
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
    return count


def encode_video(path: str | Path, frames, fps: float, size: tuple[int, int]) -> Path:
    """Encode RGB uint8 frames (H, W, 3) with PyAV; codec chosen by the extension (see CODECS).

    Frame t gets pts t in a 1/fps time base, so decoders count exactly the frames given.
    """
    path = Path(path)
    codec, options = _container_codec(path, size)
    rate = Fraction(fps).limit_denominator(1001)
    if _encoder_opens(codec, size, rate):
        _encode(path, frames, rate, size, codec, dict(options))
        return path
    logger.info("%s cannot be opened in this process (decord loaded first?); encoding in a subprocess", codec)
    with tempfile.TemporaryDirectory() as tmp:
        lossless = Path(tmp) / "frames.mkv"
        _encode(lossless, frames, rate, size, "ffv1", {})
        done = subprocess.run([sys.executable, "-c", _TRANSCODE, str(lossless), str(path), codec,
                               json.dumps(options)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"encoding {path} with {codec} in a subprocess failed: {done.stderr[-2000:]}")
    return path


def write_video(path: str | Path, seed: int, num_frames: int = 60, fps: float = 15.0,
                size: tuple[int, int] = (320, 240), num_people: int = 2, scenario: str = "walk",
                background: str | None = None, supersample: int = 2) -> Path:
    """Render and encode a clip of moving people; writes the ground-truth sidecar and returns its path.

    Args:
        path: video file; its extension picks container and codec (.mp4 .mkv .mov: H.264, .avi: MPEG-4
            part 2, .webm: VP9).
        seed: every random choice comes from it.
        size: (W, H), both even.
        scenario: one of SCENARIOS ("walk", "cross", "enter_exit", "mixed").
        background: split, style or list of styles as in render_scene (None = all families).
    Returns:
        path.with_suffix(".json"): {"video", "fps", "width", "height", "num_frames", "scenario", "seed",
        "frames": [{"frame_index", "timestamp_s", "people": [{"track_id", "keypoints", "bbox", "area"}]}]}
        with keypoints COCO-flat [x, y, v] * 17.
    """
    path = Path(path)
    _container_codec(path, size)
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"need num_frames >= 1 and fps > 0, got {num_frames} and {fps}")
    rng = np.random.default_rng(seed)
    w, h = size
    style = str(rng.choice(resolve_styles(background)))
    bg = render_background(rng, w, h, style)
    ground = Ground(horizon=rng.uniform(0.15, 0.4) * h, bottom_height=rng.uniform(0.7, 1.0) * h, frame_height=h)
    walkers = plan_scenario(rng, scenario, num_people, size, ground, num_frames, fps)
    pitch = float(rng.uniform(0, 15) * DEG)
    tracks = [simulate(wk, ground, num_frames, fps, pitch) for wk in walkers]
    light = sample_light(rng)
    effects = CameraEffects(gain=tuple(rng.uniform(0.9, 1.1, 3)), contrast=float(rng.uniform(0.85, 1.1)),
                            blur_sigma=float(rng.uniform(0.0, 0.8)), noise_sigma=float(rng.uniform(1, 4)),
                            outline=float(rng.uniform(0.6, 0.9)))
    frames_gt = []

    def frames():
        for t in range(num_frames):
            image, truth = paint_people(bg, [tr[t] for tr in tracks], rng, effects, light, supersample,
                                        style=style)
            people = [
                {"track_id": int(tid), **{k: v for k, v in coco_annotation(0, 0, kp, box, area).items()
                                          if k in ("keypoints", "bbox", "area")}}
                for tid, kp, box, area in zip(truth.track_ids, truth.keypoints, truth.boxes, truth.areas)
            ]
            frames_gt.append({"frame_index": t, "timestamp_s": t / fps, "people": people})
            yield image

    path.parent.mkdir(parents=True, exist_ok=True)
    encode_video(path, frames(), fps, size)
    gt = {"video": path.name, "fps": fps, "width": w, "height": h, "num_frames": num_frames,
          "scenario": scenario, "seed": seed, "background": style, "frames": frames_gt}
    gt_path = path.with_suffix(".json")
    gt_path.write_text(json.dumps(gt))
    logger.info("wrote %s (%d frames, %d people, %s)", path, num_frames, len(walkers), scenario)
    return gt_path


def write_sample_archive(out_dir: str | Path, seed: int = 0, num_videos: int = 4, sources: tuple[str, ...] = (
        "cam1", "cam2"), size: tuple[int, int] = (320, 240), fps: float = 15.0,
        seconds: tuple[float, float] = (2.5, 4.5), extension: str = ".mp4") -> list[Path]:
    """A small archive out_dir/<source>/clip_000.mp4 ... (+ .json ground truth) cycling through SCENARIOS.

    Returns the video paths. Video i uses seed `seed * 1000 + i`, source `sources[i % len(sources)]`.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_videos):
        source = sources[i % len(sources)]
        video = out / source / f"clip_{i:03d}{extension}"
        num_frames = int(round(rng.uniform(*seconds) * fps))
        write_video(video, seed * 1000 + i, num_frames=num_frames, fps=fps, size=size,
                    num_people=int(rng.integers(2, 4)), scenario=SCENARIOS[i % len(SCENARIOS)])
        paths.append(video)
    return paths


def video_ground_truth_to_coco(gt_json: str | Path | dict, min_keypoint_area: float = 0.0) -> dict:
    """COCO keypoint ground truth of a video sidecar: one image per frame (id = frame_index + 1).

    Images carry frame_index and timestamp_s; annotations carry track_id next to the COCO fields.
    People smaller than min_keypoint_area (silhouette pixels) get num_keypoints 0, see write_coco_dataset.
    """
    gt = gt_json if isinstance(gt_json, dict) else json.loads(Path(gt_json).read_text())
    images, annotations = [], []
    for frame in gt["frames"]:
        image_id = frame["frame_index"] + 1
        images.append({"id": image_id, "file_name": f"{gt['video']}#{frame['frame_index']:06d}",
                       "width": gt["width"], "height": gt["height"], "frame_index": frame["frame_index"],
                       "timestamp_s": frame["timestamp_s"]})
        for person in frame["people"]:
            kp = np.asarray(person["keypoints"], dtype=np.float32).reshape(-1, 3)
            area = person.get("area", person["bbox"][2] * person["bbox"][3])
            kp = kp if area >= min_keypoint_area else np.zeros_like(kp)
            ann = coco_annotation(len(annotations) + 1, image_id, kp, np.asarray(person["bbox"]), area)
            ann["track_id"] = person["track_id"]
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": [coco_person_category()]}
