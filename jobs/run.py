"""`posepipe run`: a folder or archive of videos in, keypoint tracks as hive-partitioned Parquet out.

    read (driver lists refs) -> decode (CPU actors, decord) -> infer (GPU/CPU actors: network, peaks, grouping)
    -> assemble per video (driver) -> track -> write Parquet (atomic, one file per video and table)

Exit status: 0 clean, 3 partial (some videos failed, the rest written), 1 failed, 2 bad config or input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import DEFAULT_RUN_CONFIG, ConfigError, RunConfig, add_config_arguments, config_hash, load_config

logger = logging.getLogger("posepipe.run")

EXIT_CLEAN, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
SECRET_KEYS = ("key", "secret", "token", "password", "credential")


@dataclass
class RunSummary:
    run_id: str
    output: str
    videos_listed: int = 0
    videos_ok: int = 0
    videos_failed: int = 0
    videos_skipped: int = 0
    frames: int = 0
    people: int = 0
    tracks: int = 0
    seconds: float = 0.0                                 # wall time of the whole run
    startup_seconds: float = 0.0                         # until the first rows came back: listing, Ray, actors
                                                         # starting, the model loading, the first batch
    errors: list[tuple[str, str]] = field(default_factory=list)  # (uri, error)
    finished: list[tuple[float, int]] = field(default_factory=list)  # (seconds since the start, frames) per video

    @property
    def status(self) -> str:
        if self.videos_failed == 0:
            return "clean"
        return "partial" if self.videos_ok else "failed"

    @property
    def exit_code(self) -> int:
        return {"clean": EXIT_CLEAN, "partial": EXIT_PARTIAL, "failed": EXIT_FAILED}[self.status]

    @property
    def processing_seconds(self) -> float:
        return max(self.seconds - self.startup_seconds, 0.0)

    @property
    def frames_per_second(self) -> float:
        """Frames per second of processing, start-up left out (it does not grow with the archive)."""
        return self.frames / self.processing_seconds if self.processing_seconds > 0 else 0.0


def redact(value: Any) -> Any:
    """The config as written into outputs: values of credential-like keys replaced."""
    if isinstance(value, dict):
        return {k: "***" if any(s in k.lower() for s in SECRET_KEYS) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import version
    return version("posepipe")


def check_inputs(config: RunConfig) -> tuple[list[dict], dict]:
    """Everything that can fail fast, before Ray starts: input listing and the checkpoint's metadata."""
    from pipeline.checkpoint import read_metadata
    from pipeline.read import list_videos

    if not config.input or not config.output:
        raise ConfigError("both --input (videos) and --output (Parquet destination) are required")
    refs = list_videos(config.input, config.storage_options)
    try:
        meta = read_metadata(config.model.checkpoint, storage_options=config.storage_options)
    except FileNotFoundError as exc:
        raise ConfigError(f"model.checkpoint {config.model.checkpoint!r} not found ({exc}); import the default with "
                          f"`posepipe models fetch`, train one with `posepipe train`, or point --set "
                          f"model.checkpoint=URI at an existing file") from None
    if is_topdown(meta):
        if config.model.flip_test:
            raise ConfigError("model.flip_test applies to bottom-up checkpoints only; the top-down model has none")
        if config.decode.batch_size % config.topdown.detect_every:
            raise ConfigError(f"decode.batch_size ({config.decode.batch_size}) must be a multiple of "
                              f"topdown.detect_every ({config.topdown.detect_every}): a top-down model follows people "
                              f"through each decoded batch in runs of detect_every frames")
    return refs, meta


def is_topdown(meta: dict) -> bool:
    from pipeline.blazepose.weights import CHECKPOINT_KIND

    return meta.get("kind") == CHECKPOINT_KIND


def init_ray(config: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if config.ray.address:
        ray.init(address=config.ray.address, log_to_driver=True)
    else:
        ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False, log_to_driver=False)


@dataclass(frozen=True)
class Pools:
    """The actor pools of a run and what each actor reserves."""
    decode: int                # decode actors
    infer: int                 # inference actors
    decode_cpus: float         # CPUs each decode actor reserves (`decode_cpus`)
    infer_gpus: float          # GPUs each inference actor reserves; 0: inference on CPU
    threads: int | None        # torch threads per inference actor; None: torch's default (GPU actors)


def pool_sizes(config: RunConfig) -> Pools:
    """The pools of `config` on the connected Ray cluster (`plan_pools` over its resources)."""
    import ray

    resources = ray.cluster_resources()
    return plan_pools(config, float(resources.get("CPU", 1)), int(resources.get("GPU", 0)),
                      float(resources.get("memory", 0)))


def plan_pools(config: RunConfig, cpus: float, gpus: int, memory: float) -> Pools:
    """Pools from config and a cluster's CPUs, GPUs and memory (bytes): one inference actor per GPU (or per
    `model.cpus_per_worker` CPUs left by a quarter of the CPUs decoding), shrunk to fit the memory reservations;
    a CPU inference actor runs an equal share of all the CPUs as torch threads."""
    use_gpu = gpus > 0 and config.model.device in ("auto", "cuda")
    decode = config.decode.workers or max(1, int(cpus) // 4)
    infer = config.model.workers or (gpus if use_gpu else max(1, (int(cpus) - decode)
                                                                // max(1, int(config.model.cpus_per_worker))))
    decode, infer = fit_memory(decode, infer, config, memory)
    infer_gpus = 1.0 if use_gpu else 0.0
    # CPU actors share all the CPUs: decoders and the driver use a fraction of theirs (5.5 and 9 ms a frame against
    # 37 for inference on 2 CPUs), so 2 threads on 2 CPUs ran the pipeline 1.19x faster than the 1 reserved
    threads = config.model.threads or (None if use_gpu else max(1, int(config.model.cpus_per_worker),
                                                                 int(cpus) // infer))
    return Pools(decode, infer, decode_cpus(decode, infer, config, cpus, infer_gpus), infer_gpus, threads)


def memory_bytes(gb: float | None) -> int:
    return int(gb * 2**30) if gb else 0


def fit_memory(decode: int, infer: int, config: RunConfig, available: float) -> tuple[int, int]:
    """Shrink the pools until their memory reservations fit the cluster: an actor Ray cannot place would stay
    pending and stall the job. Raises ConfigError when not even one actor of each fits."""
    per_decode, per_infer = memory_bytes(config.decode.memory_gb), memory_bytes(config.model.memory_gb)
    if per_decode + per_infer > available:
        raise ConfigError(f"decode.memory_gb + model.memory_gb = {(per_decode + per_infer) / 2**30:.1f} GB, but the "
                          f"cluster offers {available / 2**30:.1f} GB of memory to Ray tasks: one actor of each must "
                          f"fit; lower them or add nodes")
    wanted = (decode, infer)
    while decode * per_decode + infer * per_infer > available:
        if infer > 1 and (infer * per_infer >= decode * per_decode or decode == 1):
            infer -= 1
        else:
            decode -= 1
    if (decode, infer) != wanted:
        logger.warning("memory reservations fit %d decode and %d inference actors (asked for %d and %d)",
                       decode, infer, *wanted)
    return decode, infer


def decode_cpus(decode: int, infer: int, config: RunConfig, cpus: float, gpus: float) -> float:
    """CPUs each decode actor reserves: one, or an equal share of what the inference actors leave.

    Ray places an actor only where its CPUs are free, so pools that ask for more CPUs than the cluster has leave the
    inference actors pending until decoding ends (measured: 2 decode + 1 inference actor on 2 CPUs ran 3.4
    frames/s instead of 65). Decode actors then share the cores left, and the OS scheduler shares the time.
    Raises ConfigError when the inference actors alone take every CPU.
    """
    left = cpus - (0.0 if gpus else infer * config.model.cpus_per_worker)
    if left <= 0:
        raise ConfigError(f"model.workers x model.cpus_per_worker = {infer} x {config.model.cpus_per_worker:g} CPUs "
                          f"take all {cpus:g} CPUs of the cluster and leave none to decode; lower them or add nodes")
    share = min(1.0, left / decode)
    if share < 1.0:
        logger.warning("%d decode actors share %.2g CPUs (%.2g each) beside %d inference actors", decode, left,
                       share, infer)
    return share


def build_dataset(refs: list[dict], config: RunConfig, input_size: int, topdown: bool = False):
    """The Ray Data plan: refs -> decoded frame batches -> per-person rows.

    A top-down model gets whole decoded batches (one video's consecutive frames, starting at a multiple of
    `decode.batch_size`): it follows people from frame to frame within a batch, so batches Ray cut elsewhere would
    move where its detector runs, and the same video would not always give the same rows.
    """
    import ray
    from ray.data import ActorPoolStrategy

    from pipeline.decode import FrameDecoder
    from pipeline.inference import PoseEstimator

    pools = pool_sizes(config)
    logger.info("decode actors %d (%.2g CPUs each), inference actors %d (GPUs each %.0f)", pools.decode,
                pools.decode_cpus, pools.infer, pools.infer_gpus)
    # Fault tolerance: a dead actor always restarts and its batch is retried `max_task_retries` times (replayed
    # rows overwrite, see VideoAssembler); a batch that fails every retry is dropped and its videos get error rows.
    retries = dict(max_restarts=-1, max_task_retries=config.ray.max_task_retries)
    # Ray 2.60 names no parameter for these two, only the deprecated remote-args kwargs; tests/test_faults.py
    # kills actors mid-run, so a Ray that drops them fails there.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    ds = ray.data.from_items(refs, override_num_blocks=max(1, len(refs)))
    ds.context.max_errored_blocks = config.ray.max_failed_batches
    # One block per decoded batch. By default Ray Data merges a generator's yields into blocks of up to 128 MiB, so
    # a long video became one block holding all its frames (measured: 600 frames at 256 px -> 1 block of 118 MB);
    # at batch size the frames stream and the object-store bound below applies batch by batch.
    ds.context.target_max_block_size = config.decode.batch_size * (input_size * input_size * 3 + 4096)  # + columns
    if config.ray.buffered_batches:  # bound frames waiting in the object store: memory set by config, not archive
        frame_bytes = input_size * input_size * 3                          # uint8 (S, S, 3)
        limit = config.ray.buffered_batches * (pools.decode + pools.infer) * config.decode.batch_size * frame_bytes
        limits = ds.context.execution_options.resource_limits
        ds.context.execution_options.resource_limits = limits.copy(object_store_memory=limit)
    ds = ds.map_batches(
        FrameDecoder, batch_size=1, compute=ActorPoolStrategy(size=pools.decode), num_cpus=pools.decode_cpus,
        memory=memory_bytes(config.decode.memory_gb), **retries,
        fn_constructor_kwargs=dict(size=input_size, every_nth=config.decode.every_nth, fps=config.decode.fps,
                                   max_frames=config.decode.max_frames, batch_size=config.decode.batch_size,
                                   threads=config.decode.threads, storage_options=config.storage_options,
                                   cache_dir=config.decode.cache_dir, timeout_s=config.decode.timeout_s))
    ds = ds.map_batches(
        PoseEstimator, batch_size=None if topdown else config.model.batch_size,
        compute=ActorPoolStrategy(size=pools.infer),
        num_gpus=pools.infer_gpus, num_cpus=0 if pools.infer_gpus else config.model.cpus_per_worker,
        memory=memory_bytes(config.model.memory_gb), **retries,
        fn_constructor_kwargs=dict(checkpoint=config.model.checkpoint, device=config.model.device,
                                   precision=config.model.precision, flip_test=config.model.flip_test,
                                   grouping=config.grouping, topdown=config.topdown, threads=pools.threads,
                                   compile_model=config.model.compile,
                                   storage_options=config.storage_options))
    return ds


def run(config: RunConfig) -> RunSummary:
    """Run the whole job; returns the summary (also written to the `runs` table)."""
    from pipeline.assembly import VideoAssembler, VideoRows, track
    from pipeline.checkpoint import resolve_checkpoint
    from pipeline.manifest import Manifest, outputs_hash
    from pipeline.write import OutputWriter

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    config = config.model_copy(update={"model": config.model.model_copy(
        update={"checkpoint": resolve_checkpoint(config.model.checkpoint)})})  # actors load exactly this file
    refs, meta = check_inputs(config)
    manifest = Manifest.load(config.output, config.storage_options)  # fails fast on a missing output bucket
    outputs_key = outputs_hash(config, meta)
    listed = len(refs)
    current = {ref["uri"] for ref in refs if config.write.incremental and manifest.is_current(ref, outputs_key)}
    skipped = [ref for ref in refs if ref["uri"] in current]
    refs = [ref for ref in refs if ref["uri"] not in current]
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    date = (config.write.date or started.date()).isoformat()
    summary = RunSummary(run_id=run_id, output=config.output, videos_listed=listed,
                         videos_skipped=listed - len(refs))
    writer = OutputWriter(config.output, date, config.storage_options)
    by_id = {ref["video_id"]: ref for ref in refs}

    def video_paths(ref: dict) -> list[str]:  # every file this run may write for a video: frames, tracks, errors
        return [writer.path(table, ref["video_id"], ref["source"]) for table in ("frames", "tracks", "errors")]

    for ref in refs:
        manifest.plan(ref, video_paths(ref))
    manifest.save()

    videos = [video_row(ref, run_id, "skipped", rows_run_id=manifest.entries[ref["uri"]]["run_id"])
              for ref in skipped]

    def finish(ref: dict, video) -> None:
        frames = track(video, config.tracking)
        paths, written, people, tracks = video_paths(ref), [], 0, 0
        if frames or not video.error:  # a video that never decoded has no frame tables, only its error row
            frames_tbl, tracks_tbl = writer.write_video(ref, frames)
            written += paths[:2]
            people, tracks = frames_tbl.num_rows, tracks_tbl.num_rows
            summary.frames += len(frames)
            summary.people += people
            summary.tracks += tracks
        videos.append(video_row(ref, run_id, "failed" if video.error else "ok", video, len(frames), people, tracks))
        if video.error:
            writer.write_error(ref, run_id, video.error, len(frames))
            written.append(paths[2])
            summary.videos_failed += 1
            summary.errors.append((ref["uri"], video.error))
        else:
            summary.videos_ok += 1
        manifest.remove(manifest.record(ref, outputs_key, written, failed=bool(video.error), run_id=run_id))
        manifest.maybe_save()
        summary.finished.append((time.perf_counter() - t0, len(frames)))

    if refs:
        init_ray(config)
        assembler = VideoAssembler()
        size = config.model.frame_size or int(meta["input_size"])
        for batch in build_dataset(refs, config, size, is_topdown(meta)).iter_batches(batch_format="numpy",
                                                                                    batch_size=None):
            summary.startup_seconds = summary.startup_seconds or time.perf_counter() - t0
            for video in assembler.add(batch):
                finish(by_id[video.video_id], video)
        for video in assembler.pending.values():  # only if a stage lost rows: recorded, never silently dropped
            video.error = video.error or ("assemble|Incomplete|some of the video's batches failed every retry "
                                          "(see the Ray log); the frames that arrived are kept")
            finish(by_id[video.video_id], video)
        for ref in refs:  # a decode task that failed every retry (e.g. a decoder crash in C) sent nothing at all
            if ref["video_id"] not in assembler.finished and ref["video_id"] not in assembler.pending:
                finish(ref, VideoRows(ref["video_id"], error=f"decode|WorkerDied|its decode task failed all "
                                      f"{config.ray.max_task_retries + 1} attempts because the decode actor died "
                                      f"(a crash in C, an out-of-memory kill); see the Ray log, rerun to retry it"))
    manifest.save()
    writer.write_videos(run_id, videos)
    summary.seconds = time.perf_counter() - t0
    writer.write_run({
        "run_id": run_id, "status": summary.status, "started_at": started,
        "finished_at": dt.datetime.now(dt.timezone.utc), "input": config.input,
        "config_hash": config_hash(config), "config_json": json.dumps(redact(config.model_dump(mode="json"))),
        "code_version": code_version(), "videos_listed": summary.videos_listed, "videos_ok": summary.videos_ok,
        "videos_failed": summary.videos_failed, "videos_skipped": summary.videos_skipped,
        "frames": summary.frames, "people": summary.people, "tracks": summary.tracks,
        "seconds": summary.seconds, "startup_seconds": summary.startup_seconds,
        "frames_per_second": summary.frames_per_second,
    })
    return summary


def video_row(ref: dict, run_id: str, status: str, video=None, frames: int = 0, people: int = 0, tracks: int = 0,
              rows_run_id: str | None = None) -> dict[str, Any]:
    """One row of the `videos` table (plus its `source` partition). `video` is the assembled VideoRows of a processed
    video; a skipped one has no counts, and its rows are those of `rows_run_id`."""
    row = {"video_id": ref["video_id"], "uri": ref["uri"], "source": ref["source"], "run_id": run_id,
           "status": status, "rows_run_id": rows_run_id, "size_bytes": int(ref["size"])}
    if video is None:
        return row
    opened = video.fps > 0
    return row | {
        "rows_run_id": run_id if frames or not video.error else None, "frames": frames, "people": people,
        "tracks": tracks, "duration_s": video.duration_s if opened else None, "fps": video.fps if opened else None,
        "width": video.width or None, "height": video.height or None,
        "error": video.error.replace("|", ": ", 2) if video.error else None,
    }


def print_summary(summary: RunSummary) -> None:
    print(f"\nposepipe run {summary.run_id}: {summary.status}")
    print(f"  videos   {summary.videos_ok} ok / {summary.videos_failed} failed / {summary.videos_skipped} skipped "
          f"(of {summary.videos_listed} listed)")
    print(f"  frames   {summary.frames}  people found {summary.people}  tracks {summary.tracks}")
    print(f"  speed    {summary.frames_per_second:.1f} frames/s over {summary.processing_seconds:.1f} s of processing, "
          f"after {summary.startup_seconds:.1f} s of start-up (Ray, actors, model)")
    for uri, error in summary.errors:
        print(f"  failed   {uri}: {error.replace('|', ': ', 2)}")  # stage: type: message
    print(f"  output   {summary.output}  (tables: frames, tracks, videos, errors, runs)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="posepipe run", description=__doc__.split("\n")[0])
    parser.add_argument("--input", help="folder, video file or URI of the archive (overrides `input:`)")
    parser.add_argument("--output", help="folder or URI for the Parquet tables (overrides `output:`)")
    add_config_arguments(parser, DEFAULT_RUN_CONFIG)
    return parser.parse_args(argv)


def load_run_config(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    overrides += [f"input={args.input}"] if args.input else []
    overrides += [f"output={args.output}"] if args.output else []
    return load_config(RunConfig, args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline.checkpoint import CheckpointError
    from pipeline.manifest import ManifestError
    from pipeline.read import InputError

    args = parse_args(argv)
    try:
        summary = run(load_run_config(args))
    except (ConfigError, InputError, CheckpointError, ManifestError) as exc:
        print(f"posepipe run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print_summary(summary)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
