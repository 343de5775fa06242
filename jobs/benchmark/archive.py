"""The benchmark's inputs: an archive of generated videos (real people for a top-down model, synthetic walkers for
a bottom-up one), cached between runs, and the checkpoint to measure."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


TRAINED_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "posepipe-synthetic.pt"


DEFAULT_CACHE = Path(tempfile.gettempdir()) / "posepipe-benchmark"


def write_benchmark_video(path: Path, seconds: float, width: int, height: int, fps: int = 30, seed: int = 0,
                          preset: str = "fast") -> Path:
    """An H.264 video of a synthetic scene (1-4 people, textured background) seen by a camera that pans.

    The scene is rendered once, wider than the frame, and the frame window slides over it, so every frame differs
    (real decode work: motion vectors, residuals) while generating stays cheap. Written to a temporary name and
    renamed, so an interrupted run never leaves a broken file in the cache.
    """
    import av

    from pipeline.synthetic import render_scene

    rng = np.random.default_rng(seed)
    num_frames = max(1, round(seconds * fps))
    travel = min(width // 2, 2 * num_frames)                       # pixels the window pans, 2 px per frame
    scene, _ = render_scene(rng, (width + travel, height), num_people=(1, 4))  # (H, W + travel, 3) uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": preset})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            offset = travel - abs(travel - (2 * t) % (2 * travel)) if travel else 0  # back and forth
            frame = np.ascontiguousarray(scene[:, offset:offset + width])            # (H, W, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def benchmark_archive(cache_dir: Path, videos: int, seconds: float, width: int, height: int, fps: int = 30,
                      preset: str = "fast", people: str = "synthetic") -> Path:
    """A folder of `videos` distinct benchmark videos (seeds 0..n-1), generated once into the cache and reused.

    Video i is the same file in every archive of that size and length (hard links to one generated copy). `people`
    is "synthetic" (rendered figures, `write_benchmark_video`) or "real" (the shipped photos of real people side by
    side under a panning camera, `pipeline.photos.write_group_clip`: what the real-trained model finds).
    """
    key = f"{width}x{height}-{seconds:g}s-{fps}fps" + ("-real" if people == "real" else "")
    archive = cache_dir / "archives" / f"{key}-n{videos}"
    for seed in range(videos):
        target = archive / f"video{seed:03d}.mp4"
        if target.exists():
            continue
        source = cache_dir / "videos" / key / f"video{seed:03d}.mp4"
        if not source.exists():
            logger.info("generating %s", source)
            if people == "real":
                from pipeline.photos import write_group_clip

                source.parent.mkdir(parents=True, exist_ok=True)
                tmp = source.with_name(f".{source.stem}.{os.getpid()}.tmp.mp4")  # renamed once whole
                write_group_clip(tmp, seconds, (width, height), fps, seed).replace(source)
            else:
                write_benchmark_video(source, seconds, width, height, fps, seed, preset)
        archive.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return archive


def archive_videos(archive: Path) -> list[Path]:
    return sorted(archive.glob("*.mp4"))


def default_checkpoint(cache_dir: Path) -> tuple[str, bool]:
    """The run's default model when its weights are imported, else the synthetic-trained checkpoint, else a
    random-weights PoseNet of the default ModelConfig (cached).

    Returns (path, trained). Random weights give near-empty heatmaps, so grouping has little to do: a trained
    model is the fair measurement of the people-finding cost.
    """
    from pipeline.config import ModelSettings
    from pipeline.models.checkpoint import CheckpointError, resolve_checkpoint

    try:
        return resolve_checkpoint(ModelSettings().checkpoint), True
    except CheckpointError as exc:
        logger.warning("%s; benchmarking the synthetic-trained model instead", exc)
    if TRAINED_CHECKPOINT.exists():
        return str(TRAINED_CHECKPOINT), True
    path = cache_dir / "random-posenet.pt"
    if not path.exists():
        from pipeline.models.bottomup import ModelConfig, PoseNet
        from pipeline.models.checkpoint import checkpoint_metadata, save_checkpoint

        config = ModelConfig()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(PoseNet(config), str(path), checkpoint_metadata(config))
    return str(path), False


def video_frames(path: Path, size: int, count: int, pad: bool = True) -> np.ndarray:
    """The first `count` frames of a video as the decode stage hands them over: uint8 (count, S, S, 3), or unpadded
    (count, h, w, 3) as a top-down model gets them."""
    from pipeline.video import open_stream, sample_frame_indices

    stream = open_stream(str(path), size, pad=pad)
    indices = sample_frame_indices(stream.num_frames, stream.fps)[:count]
    return np.concatenate([frames for _, _, frames in stream.batches(indices, count)])
