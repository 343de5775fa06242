"""`posepipe benchmark`: how fast the pipeline runs against what its parts can do alone, on this machine, in one run.

Rows of the table (all rates in frames/s; every row of one run is measured on the same machine, minutes apart):
    raw decode        decord + letterbox alone (`pipeline.stages.decode.open_stream`), in as many processes as the
                      pipeline's decode pool, over the benchmark archive
    raw model fwd     the network's forward alone on a normalised device tensor, per inference-pool process
    raw model         the inference actor's whole work (`PoseEstimator.__call__`): normalise, forward, peaks,
                      grouping and the per-person rows, on random uint8 frames
    pipeline          `jobs.run.run` on the archive: decode -> infer -> grouping -> tracking -> Parquet
    pipeline 1 video  the same job on one video of the archive; with the row above it gives the marginal rate
                      (the fixed cost of a run, actors starting and the model loading, left out) and the memory
                      check (peak RSS of 1 vs 20 videos of the same length)
    scaling           the pipeline with 1, 2, ... decode actors
    memory ...        20 videos when the archive has another count; with --long a short and a long 1080p video
    variant ...       with --variant: the pipeline under other settings, alternating with the baseline --repeat
                      times, so that background load drifting over minutes hits every configuration alike
Peak RSS is sampled with psutil over the driver's process tree (Ray's node processes and workers are its children);
object-store use is Ray's plasma usage from the raylet's memory summary, sampled alongside. So is CPU time per role
(driver, decode, infer, ray): CPU ms per frame say where the pipeline spends work beyond the raw stages.

On a shared machine compare rows of one run only; wall-clock rates move with other people's load (so, less, do
CPU times: cache and memory-bandwidth contention). `docs/performance.md` has the method and the findings.

Shape letters: B = frames per batch, S = square model input (pixels).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jobs.cli import ArgumentParser, configure_logging, fail
from jobs.resources import ResourceSampler, format_cpu, wait_for_actors_to_exit

logger = logging.getLogger("posepipe.benchmark")

COLUMNS = ("measurement", "config", "frames", "seconds", "frames_per_s", "driver_rss_mb", "workers_rss_mb",
           "object_store_mb", "note")
TRAINED_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "posepipe-synthetic.pt"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "posepipe-benchmark"
MEMORY_TARGET = 1.2      # peak RSS of 20 videos / 1 video must stay below this
RATIO_TARGET = 0.85      # pipeline / min(raw decode, raw model) must reach this


@dataclass
class Measurement:
    """One row of the table; RSS and object-store columns are peaks over the measurement, None where not sampled."""

    measurement: str
    config: str
    frames: int
    seconds: float
    driver_rss_mb: float | None = None
    workers_rss_mb: float | None = None
    object_store_mb: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # JSON only: per-role peaks, GPU busy, ...

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def row(self) -> dict[str, Any]:
        """The table's columns (COLUMNS order), plus `extra` for the JSON file."""
        values = {**asdict(self), "frames_per_s": self.frames_per_s}
        return {**{c: values[c] for c in COLUMNS}, "extra": self.extra}


# --- benchmark videos -------------------------------------------------------------------------------------------------

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


# --- parallel timed workers (raw rates) -----------------------------------------------------------------------------

def _worker_entry(target: Callable, args: tuple, barrier, results) -> None:
    try:
        results.put(("ok", target(*args, barrier)))
    except BaseException as exc:  # reported to the parent, which raises with the worker's message
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def run_workers(target: Callable, args_list: list[tuple], timeout_s: float = 1800.0) -> list[dict]:
    """Run `target(*args, barrier)` in one fresh (spawned) process per args tuple, and collect their results.

    Workers load what they need, then meet at the barrier, so imports and warm-up stay out of the timings; each
    returns a dict with its own timed phases. Spawned processes keep the raw rates free of the driver's threads and
    memory, as the pipeline's actors are.
    """
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(args_list)), ctx.Queue()
    procs = [ctx.Process(target=_worker_entry, args=(target, args, barrier, results), daemon=True)
             for args in args_list]
    for proc in procs:
        proc.start()
    out, errors = [], []
    try:
        for _ in procs:
            status, value = results.get(timeout=timeout_s)
            (out if status == "ok" else errors).append(value)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    if errors:
        raise RuntimeError(f"benchmark worker failed: {errors[0]}")
    return out


def combine_phase(results: list[dict], phase: str) -> tuple[int, float]:  # decode: workers share one queue
    """Frames and wall seconds of one phase over all workers: first start to last end (shared monotonic clock)."""
    frames = sum(r[phase]["frames"] for r in results)
    seconds = max(r[phase]["end"] for r in results) - min(r[phase]["start"] for r in results)
    return frames, seconds


def decode_worker(tasks, size: int, batch_size: int, threads: int, sampling: dict, barrier) -> dict:
    """Decode videos from the shared queue until it is empty, as a decode actor would (one video at a time)."""
    import decord  # noqa: F401  (loaded before the barrier: import time is not decode time)

    from pipeline.video import open_stream, sample_frame_indices

    barrier.wait()
    start, cpu, frames = time.monotonic(), time.process_time(), 0
    while (path := tasks.get()) is not None:
        stream = open_stream(path, size, threads)  # the decode stage's choice of backend (decord, else PyAV)
        indices = sample_frame_indices(stream.num_frames, stream.fps, **sampling)
        for chunk, _, batch in stream.batches(indices, batch_size):  # batch: (b, S, S, 3) uint8
            frames += len(chunk)
    return {"decode": {"frames": frames, "start": start, "end": time.monotonic(), "cpu_s": time.process_time() - cpu}}


def raw_decode_rate(videos: list[Path], size: int, workers: int, batch_size: int = 32, threads: int = 1,
                    sampling: dict | None = None) -> Measurement:
    """decord decode + resize + letterbox of every video, in `workers` processes pulling from one queue.

    `sampling` takes `sample_frame_indices`' keywords (every_nth, target_fps, max_frames) as the decode stage does.
    """
    ctx = mp.get_context("spawn")
    tasks = ctx.Queue()
    for path in videos:
        tasks.put(str(path))
    for _ in range(workers):
        tasks.put(None)
    results = run_workers(decode_worker, [(tasks, size, batch_size, threads, sampling or {})] * workers)
    frames, seconds = combine_phase(results, "decode")
    row = Measurement("raw decode", f"{workers} proc x {threads} thr, S={size}, {len(videos)} videos",
                      frames, seconds)
    row.extra["cpu_ms_per_frame"] = 1e3 * sum(r["decode"]["cpu_s"] for r in results) / max(1, frames)
    row.note = f"CPU {row.extra['cpu_ms_per_frame']:.1f} ms/frame"
    return row


def _cuda_sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_worker(checkpoint: str, batch_size: int, device: str, precision: str, threads: int | None,
                 compile_model: bool, min_seconds: float, seed: int, frames: np.ndarray | None, size: int,
                 picture: tuple[int, int] | None, barrier) -> dict:
    """Time the inference actor's work on uint8 frames: the model alone, and the whole `__call__`.

    The model alone is the network's forward on a normalised device tensor for a bottom-up model, and the whole
    people finding (`PoseEstimator.predict`: detector, crops, landmark nets, decoding) for a top-down one.
    `frames` (B, S, S, 3) are decoded video frames of pictures `picture` (width, height), or None for random ones
    (a trained model finds no people in noise, so random input leaves out most of the people cost; frames with
    people put it in).

    Both use the actor class itself, so its settings apply (threads, device, autocast, channels_last on cuda). The
    two steps alternate batch by batch, so a change in background load hits both alike. On cuda each step is also
    timed with CUDA events, and GPU utilisation is sampled with pynvml when it is installed.

    Returns per phase: frames, busy seconds (sum of step times), best step seconds, CPU seconds of the process
    (all its threads) and GPU milliseconds.
    """
    import torch

    from pipeline.models.pose_model import BottomUpModel
    from pipeline.models.runtime import run_network
    from pipeline.pose.letterbox import normalize
    from pipeline.stages.infer import PoseEstimator

    estimator = PoseEstimator(checkpoint, device=device, precision=precision, threads=threads)
    model, dev = estimator.model, estimator.device
    rng = np.random.default_rng(seed)
    images = (rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8) if frames is None
              else np.resize(frames, (batch_size, size, size, 3)))            # (B, S, S, 3), repeated if short
    width, height = picture or (size, size)
    batch = {"video_id": np.full(batch_size, "bench", dtype=object), "frame_index": np.arange(batch_size),
             "timestamp_s": np.zeros(batch_size), "width": np.full(batch_size, width, np.int32),
             "height": np.full(batch_size, height, np.int32), "image": images,
             "is_end": np.zeros(batch_size, bool), "num_frames": np.zeros(batch_size, np.int64),
             "error": np.full(batch_size, "", dtype=object),
             "fps": np.zeros(batch_size), "duration_s": np.zeros(batch_size)}
    if compile_model:
        model.compile()
    if isinstance(model, BottomUpModel):
        x = normalize(torch.from_numpy(images).to(dev), model.mean, model.std)  # (B, 3, S, S)

        def forward() -> None:
            run_network(model.network, x, model.dtype, model.flip_test)  # as `find_people` runs it
    else:
        chains = [list(range(batch_size))]                                  # one video, as a decoded batch is

        def forward() -> None:
            estimator.predict(images, batch["width"], batch["height"], chains)

    steps = {"forward": forward, "call": lambda: estimator(batch)}
    for _ in range(3 if compile_model else 2):  # warm-up: allocator, oneDNN/cudnn kernels, compilation
        for step in steps.values():
            step()
    _cuda_sync(dev)
    phases = {name: {"frames": 0, "seconds": 0.0, "best": math.inf, "cpu_s": 0.0, "gpu_ms": 0.0} for name in steps}
    barrier.wait()
    started = time.monotonic()
    with gpu_utilisation_sampler(dev) as utilisation:
        while min(p["frames"] for p in phases.values()) < 3 * batch_size or time.monotonic() - started < min_seconds:
            for name, step in steps.items():
                events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if dev.type == "cuda" else []
                begin, cpu = time.perf_counter(), time.process_time()
                if events:
                    events[0].record()
                step()
                if events:
                    events[1].record()
                    events[1].synchronize()
                    phases[name]["gpu_ms"] += events[0].elapsed_time(events[1])
                elapsed = time.perf_counter() - begin
                phase = phases[name]
                phase["frames"] += batch_size
                phase["seconds"] += elapsed
                phase["best"] = min(phase["best"], elapsed)
                phase["cpu_s"] += time.process_time() - cpu
    dtype = str(estimator.model_dtype).removeprefix("torch.")  # what `precision` resolved to here
    return {**phases, "gpu_util": utilisation.get("mean"), "device": str(dev), "threads": torch.get_num_threads(),
            "dtype": dtype}


@contextlib.contextmanager
def gpu_utilisation_sampler(device, interval_s: float = 0.1):
    """Mean GPU utilisation (%) from pynvml while the block runs; yields a dict filled in at exit (empty on CPU)."""
    result: dict[str, float] = {}
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if device.type != "cuda" or pynvml is None:
        yield result
        return
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        pynvml.nvmlShutdown()
        if samples:
            result["mean"] = float(np.mean(samples))


def video_frames(path: Path, size: int, count: int) -> np.ndarray:
    """The first `count` frames of a video as the decode stage hands them over: uint8 (count, S, S, 3)."""
    from pipeline.video import open_stream, sample_frame_indices

    stream = open_stream(str(path), size)
    indices = sample_frame_indices(stream.num_frames, stream.fps)[:count]
    return np.concatenate([frames for _, _, frames in stream.batches(indices, count)])


def raw_model_rates(checkpoint: str, batch_size: int, workers: int, threads: int | None, device: str = "auto",
                    precision: str = "auto", compile_model: bool = False, min_seconds: float = 5.0,
                    frames: np.ndarray | None = None, size: int | None = None,
                    picture: tuple[int, int] | None = None) -> tuple[Measurement, Measurement]:
    """(forward only, whole actor call) frames/s of `workers` inference processes running side by side.

    The rate is the sum of the workers' own rates (frames / busy seconds); `extra.best_frames_per_s` is the rate of
    the fastest batch, an estimate of what an unloaded machine gives when other jobs share the CPU.
    """
    if size is None:
        from pipeline.models.checkpoint import read_metadata, resolve_checkpoint

        size = frames.shape[1] if frames is not None else int(read_metadata(resolve_checkpoint(checkpoint))
                                                               ["input_size"])
    args = [(checkpoint, batch_size, device, precision, threads, compile_model, min_seconds, seed, frames, size,
             picture) for seed in range(workers)]
    results = run_workers(model_worker, args)
    dev, thr, dtype = results[0]["device"], results[0]["threads"], results[0]["dtype"]
    source = "video" if frames is not None else "random"
    config = (f"{workers} proc x {thr} thr, B={batch_size}, {dev} {dtype}, {source} input"
              f"{', compiled' if compile_model else ''}")
    rows = []
    for phase, name in (("forward", "raw model fwd"), ("call", "raw model")):
        rate = sum(r[phase]["frames"] / r[phase]["seconds"] for r in results)
        count = sum(r[phase]["frames"] for r in results)
        row = Measurement(name, config, count, count / rate)
        row.extra["best_frames_per_s"] = sum(batch_size / r[phase]["best"] for r in results)
        row.extra["cpu_ms_per_frame"] = 1e3 * sum(r[phase]["cpu_s"] for r in results) / count
        if dev.startswith("cuda"):
            busy = [r["forward"]["gpu_ms"] / 1e3 / r["forward"]["frames"] * r[phase]["frames"] / r[phase]["seconds"]
                    for r in results]  # GPU time of a forward, per wall second of this phase
            row.extra["gpu_busy_forward_fraction"] = float(np.mean(busy))
            row.extra["gpu_util_percent"] = results[0]["gpu_util"]  # pynvml, over both steps' loop
            row.note = f"forward keeps the GPU busy {row.extra['gpu_busy_forward_fraction']:.0%} of this step"
        else:
            row.note = (f"CPU {row.extra['cpu_ms_per_frame']:.1f} ms/frame; "
                        f"best batch {row.extra['best_frames_per_s']:.1f} frames/s")
        rows.append(row)
    return rows[0], rows[1]


# --- pipeline runs with resource sampling ---------------------------------------------------------------------------

def pipeline_overrides(checkpoint: str, batch_size: int, device: str, precision: str,
                       decode_workers: int | None, extra: list[str] = ()) -> list[str]:
    sets = [f"model.checkpoint={checkpoint}", f"model.batch_size={batch_size}", f"model.device={device}",
            f"model.precision={precision}"]
    sets += [f"decode.workers={decode_workers}"] if decode_workers else []
    return sets + list(extra)


def pipeline_run(archive: Path, overrides: list[str], name: str = "pipeline", config_label: str = "") -> Measurement:
    """`jobs.run.run` over `archive` into a temporary output (removed after), with resources sampled throughout."""
    from jobs.run import load_run_config, parse_args, run
    from pipeline.stages.plan import init_ray, pool_sizes

    output = Path(tempfile.mkdtemp(prefix="posepipe-bench-out-"))
    try:
        args = ["--input", str(archive), "--output", str(output)]
        for item in overrides:
            args += ["--set", item]
        config = load_run_config(parse_args(args))
        init_ray(config)
        pools = pool_sizes(config)
        wait_for_actors_to_exit()  # the previous run's actors, still exiting, would count in this run's memory
        with ResourceSampler() as sampler:
            summary = run(config)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    if summary.status != "clean":
        raise RuntimeError(f"benchmark pipeline run over {archive} was {summary.status}, expected clean: "
                           f"{summary.errors[:3]}; delete the cache folder to regenerate the videos")
    label = config_label or (f"decode {pools.decode} x {config.decode.threads} thr, infer {pools.infer} x "
                             f"{pools.threads or 'auto'} thr{' (GPU)' if pools.infer_gpus else ''}, "
                             f"B={config.model.batch_size}, "
                             f"{len(archive_videos(archive))} videos")
    cpu = sampler.cpu_seconds()
    extra = {"steady_frames_per_s": steady_rate(summary.finished),
             "role_peak_rss_mb": sampler.role_mb, "role_sum_peak_rss_mb": sampler.role_sum_mb,
             "role_max_processes": sampler.role_count, "job_rss_mb": sampler.job_mb,
             "workers_private_mb": sampler.workers_anon_mb,
             "cpu": cpu, "people": summary.people, "tracks": summary.tracks}
    return Measurement(name, label, summary.frames, summary.seconds, sampler.driver_mb, sampler.workers_mb,
                       sampler.store_mb, format_cpu(cpu, summary.frames), extra)


def steady_rate(finished: list[tuple[float, int]]) -> float | None:
    """Frames/s between the first and the last video to finish: the rate once the actors run, with no start-up in it.

    Args:
        finished: (seconds since the run started, frames) per video, as `RunSummary.finished`.
    Returns None for fewer than 3 videos (too few to tell a rate from their ordering).
    """
    if len(finished) < 3:
        return None
    times = sorted(finished)
    span = times[-1][0] - times[0][0]
    return sum(frames for _, frames in times[1:]) / span if span > 0 else None


# --- report -----------------------------------------------------------------------------------------------------------

def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[Measurement]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for m in rows:
        row = m.row()
        lines.append("| " + " | ".join(format_value(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def find_row(rows: list[Measurement], name: str) -> Measurement | None:
    return next((m for m in rows if m.measurement == name), None)


def total_rss_mb(m: Measurement) -> float:
    return (m.driver_rss_mb or 0.0) + (m.workers_rss_mb or 0.0)


def job_rss_mb(m: Measurement) -> float | None:
    """Driver + decode actors + inference actors, each at its own peak.

    Summing per-role peaks, not one instant, keeps a short run fair: its decode actor may be done before the
    inference actor reaches its peak, which a long run's overlapping stages never are.
    """
    roles = m.extra.get("role_sum_peak_rss_mb")
    if m.driver_rss_mb is None or not roles:
        return None
    return m.driver_rss_mb + roles.get("FrameDecoder", 0.0) + roles.get("PoseEstimator", 0.0)


def summarize(rows: list[Measurement]) -> dict[str, Any]:
    """The targets: pipeline / min(raw decode, raw model), and peak RSS of 20 videos vs 1 video.

    The ratio is given three times: on wall time; on the marginal rate (frames added / seconds added between the
    1-video and the N-video run), which leaves out the fixed cost each run pays (actors start, model loads) if both
    runs pay the same; and on the steady rate of the N-video run (`steady_rate`), which needs no such assumption.
    """
    out: dict[str, Any] = {}
    decode, model, pipe = find_row(rows, "raw decode"), find_row(rows, "raw model"), find_row(rows, "pipeline")
    one = find_row(rows, "pipeline 1 video")
    if decode and model and pipe:
        bound = min(decode.frames_per_s, model.frames_per_s)
        out["raw_bound_frames_per_s"] = bound
        out["ratio_wall"] = pipe.frames_per_s / bound if bound else None
        if one and pipe.frames > one.frames and pipe.seconds > one.seconds:
            marginal = (pipe.frames - one.frames) / (pipe.seconds - one.seconds)
            out["pipeline_marginal_frames_per_s"] = marginal
            out["fixed_cost_s"] = one.seconds - one.frames / marginal
            out["ratio_marginal"] = marginal / bound if bound else None
        steady = pipe.extra.get("steady_frames_per_s")
        if steady:
            out["pipeline_steady_frames_per_s"] = steady
            out["ratio_steady"] = steady / bound if bound else None
        out["ratio_target"] = RATIO_TARGET
        raw_cpu = [m.extra.get("cpu_ms_per_frame") for m in (decode, model)]
        if one and None not in raw_cpu and "cpu" in pipe.extra and "cpu" in one.extra and pipe.frames > one.frames:
            per_frame = {role: 1e3 * (pipe.extra["cpu"][role]["cpu_s"] - one.extra["cpu"].get(role, {}).get("cpu_s", 0))
                         / (pipe.frames - one.frames) for role in pipe.extra["cpu"]}
            out["raw_cpu_ms_per_frame"] = sum(raw_cpu)
            out["pipeline_marginal_cpu_ms_per_frame"] = per_frame
            out["cpu_efficiency"] = sum(raw_cpu) / per_frame["all"] if per_frame.get("all") else None
    many = find_row(rows, "memory 20 videos") or (pipe if pipe and "20 videos" in pipe.config else None)
    if one and many:
        out["memory_ratio_20_vs_1"] = total_rss_mb(many) / total_rss_mb(one) if total_rss_mb(one) else None
        if job_rss_mb(one) and job_rss_mb(many):
            out["job_memory_ratio_20_vs_1"] = job_rss_mb(many) / job_rss_mb(one)
        out["memory_target"] = MEMORY_TARGET
    variants: dict[str, list[float]] = {}
    cpu_gains: dict[str, list[float]] = {}
    baseline = None
    for m in rows:  # each variant against the baseline run just before it (same round)
        if m.measurement == "variant baseline":
            baseline = m
        elif m.measurement.startswith("variant ") and baseline is not None and baseline.frames_per_s > 0:
            name = m.measurement[len("variant "):]
            variants.setdefault(name, []).append(m.frames_per_s / baseline.frames_per_s)
            cpu, base_cpu = m.extra.get("cpu", {}).get("all"), baseline.extra.get("cpu", {}).get("all")
            if cpu and base_cpu and cpu["cpu_s"] > 0:  # CPU per frame, baseline / variant: > 1 is cheaper
                cpu_gains.setdefault(name, []).append(base_cpu["cpu_s"] / baseline.frames / (cpu["cpu_s"] / m.frames))
    if variants:
        out["variant_speedup_vs_baseline"] = {name: float(np.median(v)) for name, v in variants.items()}
        out["variant_cpu_gain_vs_baseline"] = {name: float(np.median(v)) for name, v in cpu_gains.items()}
    short, long = find_row(rows, "memory short 1080p"), find_row(rows, "memory long 1080p")
    if short and long and total_rss_mb(short):
        out["memory_ratio_long_vs_short_1080p"] = total_rss_mb(long) / total_rss_mb(short)
        if job_rss_mb(short) and job_rss_mb(long):
            out["job_memory_ratio_long_vs_short_1080p"] = job_rss_mb(long) / job_rss_mb(short)
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    if "ratio_wall" in summary:
        lines.append(f"pipeline / min(raw decode, raw model) = {summary['ratio_wall']:.2f} on wall time"
                     + (f", {summary['ratio_marginal']:.2f} on the marginal rate "
                        f"({summary['pipeline_marginal_frames_per_s']:.1f} frames/s; fixed cost per run "
                        f"{summary['fixed_cost_s']:.1f} s)" if "ratio_marginal" in summary else "")
                     + (f", {summary['ratio_steady']:.2f} on the steady rate "
                        f"({summary['pipeline_steady_frames_per_s']:.1f} frames/s from the first video finished to "
                        f"the last)" if "ratio_steady" in summary else "")
                     + f" (target >= {RATIO_TARGET})")
    if summary.get("memory_ratio_20_vs_1") is not None:
        job = summary.get("job_memory_ratio_20_vs_1")
        lines.append(f"peak RSS 20 videos / 1 video = {summary['memory_ratio_20_vs_1']:.2f} driver + all Ray workers"
                     + (f", {job:.2f} driver + decode + inference actors (each at its peak)" if job else "")
                     + f" (target < {MEMORY_TARGET})")
    if summary.get("cpu_efficiency") is not None:
        per_frame = summary["pipeline_marginal_cpu_ms_per_frame"]
        lines.append(f"CPU per frame: raw decode + raw model {summary['raw_cpu_ms_per_frame']:.1f} ms, pipeline "
                     f"{per_frame['all']:.1f} ms (" + ", ".join(f"{k} {v:.1f}" for k, v in per_frame.items()
                                                            if k != "all")
                     + f"); efficiency {summary['cpu_efficiency']:.2f}")
    gains = summary.get("variant_cpu_gain_vs_baseline", {})
    for name, speedup in summary.get("variant_speedup_vs_baseline", {}).items():
        lines.append(f"variant {name}: {speedup:.2f} x the baseline's frames/s"
                     + (f", {gains[name]:.2f} x less CPU per frame" if name in gains else "")
                     + " (median over rounds)")
    if summary.get("memory_ratio_long_vs_short_1080p") is not None:
        job = summary.get("job_memory_ratio_long_vs_short_1080p")
        lines.append(f"peak RSS long / short 1080p video = {summary['memory_ratio_long_vs_short_1080p']:.2f} driver + "
                     f"all Ray workers" + (f", {job:.2f} driver + decode + inference actors" if job else ""))
    return "\n".join(lines)


def machine_description() -> dict[str, Any]:
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "load_average_1m": os.getloadavg()[0]}


def write_outputs(out: Path, rows: list[Measurement], summary: dict[str, Any], context: dict[str, Any]) -> None:
    """`out`.json (rows with extras, summary, machine and options) and `out`.md (the table and the summary)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"context": context, "summary": summary, "rows": [m.row() for m in rows]}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))
    out.with_suffix(".md").write_text(f"{markdown_table(rows)}\n\n{format_summary(summary)}\n")


# --- main ------------------------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match or int(match.group(1)) < 16 or int(match.group(2)) < 16:
        raise argparse.ArgumentTypeError(f"expected a video size WIDTHxHEIGHT of at least 16x16, e.g. 640x360; "
                                         f"got {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, e.g. 1,2; "
                                         f"got {text!r}")
    return values


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition("=")
    overrides = [item.strip() for item in rest.split(",") if item.strip()]
    if not sep or not name.strip() or not overrides or any("=" not in item for item in overrides):
        raise argparse.ArgumentTypeError(f"expected NAME=KEY=VALUE[,KEY=VALUE], e.g. threads2=model.threads=2; "
                                         f"got {text!r}")
    return name.strip(), overrides


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser("benchmark", __doc__)
    p.add_argument("--videos", type=int, default=20, help="videos in the benchmark archive")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each video, seconds at 30 fps")
    p.add_argument("--size", type=parse_size, default="640x360", help="video size WxH")
    p.add_argument("--checkpoint", help="model name or checkpoint (default: the run's default model when imported, "
                                        "else models/posepipe-synthetic.pt, else a random-weights PoseNet)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (model.batch_size)")
    p.add_argument("--batch-sizes", type=parse_int_list, help="also measure the raw model at these batch sizes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the model runs, as model.device")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast of the network, as model.precision (default: a run's, auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in the raw model measurement")
    p.add_argument("--decode-workers", type=parse_int_list, default="1,2",
                   help="decode actors of the scaling runs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra run-config override for every pipeline run, e.g. model.threads=2 (repeatable)")
    p.add_argument("--model-input", choices=("random", "video"), default="random",
                   help="raw model input: random uint8 frames, or frames of the first benchmark video (people in "
                        "view, so grouping does its real work)")
    p.add_argument("--model-seconds", type=float, default=5.0, help="minimum timed seconds per raw model phase")
    p.add_argument("--skip", default="", help="comma list of parts to skip: raw,nets,pipeline,scaling,memory "
                                              "(nets: the top-down model's detector and landmark nets alone)")
    p.add_argument("--variant", dest="variants", action="append", type=parse_variant, default=[],
                   metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                   help="a pipeline configuration to compare with the baseline, e.g. threads2=model.threads=2; "
                        "runs alternate baseline, variant, ... --repeat times (repeatable)")
    p.add_argument("--repeat", type=int, default=2, help="rounds of baseline + variants")
    p.add_argument("--long", action="store_true", help="also run a long 1080p video to show memory stays bounded")
    p.add_argument("--long-seconds", type=float, default=60.0, help="length of the --long video")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="generated videos")
    p.add_argument("--out", type=Path, help="write the table to OUT.json and OUT.md")
    return p.parse_args(argv)


def run_benchmark(args: argparse.Namespace) -> tuple[list[Measurement], dict[str, Any]]:
    """All measurements of one benchmark run, in order; returns the rows and the context (machine, options)."""
    from pipeline.config import RunConfig, load_config
    from pipeline.models.checkpoint import read_metadata, resolve_checkpoint
    from pipeline.stages.plan import is_topdown

    width, height = args.size
    checkpoint, trained = (resolve_checkpoint(args.checkpoint), True) if args.checkpoint \
        else default_checkpoint(args.cache_dir)
    meta = read_metadata(checkpoint)
    topdown = is_topdown(meta)
    size = int(meta["input_size"])
    people = "real" if topdown else "synthetic"                    # footage the model can find people in
    archive = benchmark_archive(args.cache_dir, args.videos, args.seconds, width, height, people=people)
    single = benchmark_archive(args.cache_dir, 1, args.seconds, width, height, people=people)
    videos = archive_videos(archive)
    context = {"machine": machine_description(), "checkpoint": checkpoint, "trained_checkpoint": trained,
               "input_size": size, "archive": str(archive), "videos": len(videos), "video_size": f"{width}x{height}",
               "seconds_per_video": args.seconds, "overrides": args.overrides, "people": people}
    logger.info("benchmark on %s", context["machine"])

    # the pools the pipeline will use, resolved as jobs.run does (Ray is started here, once, for every run)
    import ray

    from pipeline.stages.plan import init_ray, pool_sizes

    base = pipeline_overrides(checkpoint, args.batch_size, args.device, args.precision, None, args.overrides)
    config = load_config(RunConfig, None, base)
    started_ray = not ray.is_initialized()
    init_ray(config)
    pools = pool_sizes(config)
    rows: list[Measurement] = []
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    try:
        model_frames = video_frames(videos[0], size, max(args.batch_sizes or [args.batch_size])) \
            if args.model_input == "video" or topdown else None
        if "raw" not in skip:
            sampling = dict(every_nth=config.decode.every_nth, target_fps=config.decode.fps,
                            max_frames=config.decode.max_frames)
            rows.append(raw_decode_rate(videos, size, pools.decode, config.decode.batch_size,
                                        config.decode.threads, sampling))
            for batch_size in dict.fromkeys([args.batch_size] + (args.batch_sizes or [])):
                rows += raw_model_rates(checkpoint, batch_size, pools.infer, pools.threads, args.device,
                                        args.precision, args.compile, args.model_seconds, model_frames, size,
                                        (width, height))
        if topdown and "nets" not in skip:
            from jobs.benchmark_topdown import raw_net_rates
            from pipeline.models.blazepose.weights import MODEL_NAMES, cached_checkpoint

            variants = {v: str(cached_checkpoint(name)) for name, v in MODEL_NAMES.items()
                        if cached_checkpoint(name).is_file()} or {meta["variant"]: checkpoint}
            rows += raw_net_rates(variants, sorted({args.batch_size, *(args.batch_sizes or [])}), args.device,
                                  args.precision, pools.threads or 1, args.compile, args.model_seconds / 2)
        if "pipeline" not in skip:
            rows.append(pipeline_run(single, base, "pipeline 1 video"))
            rows.append(pipeline_run(archive, base, "pipeline"))
        for repetition in range(args.repeat if args.variants else 0):  # baseline and variants, interleaved
            for name, overrides in [("baseline", [])] + args.variants:
                rows.append(pipeline_run(archive, base + overrides, f"variant {name}",
                                         f"run {repetition + 1}: {' '.join(overrides) or 'as configured'}"))
        if "scaling" not in skip:
            for n in args.decode_workers:
                if n == pools.decode and not config.decode.workers:
                    continue  # the pipeline row is this run
                overrides = base + [f"decode.workers={n}"]
                rows.append(pipeline_run(archive, overrides, "scaling", f"decode {n}, {len(videos)} videos"))
        if "memory" not in skip:
            if len(videos) != 20:  # else the pipeline row is the 20-video run
                twenty = benchmark_archive(args.cache_dir, 20, args.seconds, width, height)
                rows.append(pipeline_run(twenty, base, "memory 20 videos"))
            if args.long:  # the same resolution short and long: memory must not grow with length
                for name, seconds in (("memory short 1080p", args.seconds), ("memory long 1080p", args.long_seconds)):
                    archive_1080 = benchmark_archive(args.cache_dir, 1, seconds, 1920, 1080, preset="veryfast")
                    rows.append(pipeline_run(archive_1080, base, name, f"1 video 1920x1080, {seconds:g} s"))
    finally:
        if started_ray:
            ray.shutdown()
    return rows, context


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(logging.INFO)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-second progress lines would bury the table
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the benchmark's own local cluster
    if args.videos < 1 or args.seconds <= 0 or args.batch_size < 1:
        return fail("--videos, --seconds and --batch-size must be positive")
    from pipeline.config import ModelSettings

    args.precision = args.precision or ModelSettings().precision
    rows, context = run_benchmark(args)
    summary = summarize(rows)
    print(f"\n{markdown_table(rows)}\n\n{format_summary(summary)}")
    if args.out:
        write_outputs(args.out, rows, summary, context)
        print(f"written {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
