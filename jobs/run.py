"""`posepipe run`: a folder or archive of videos in, keypoint tracks as Delta Lake tables out.

    posepipe run --input videos/ --output poses/
    posepipe run --input s3://bucket/videos --output s3://bucket/poses --set decode.fps=5
    posepipe run --input videos/ --output poses/ --config configs/cluster.yaml --show-config

    read + plan (driver: lists refs, reads the videos table) -> decode (CPU actors, decord) -> infer (GPU/CPU
    actors: network, peaks) -> index complete videos (driver: block references only) -> track and write data files
    (write tasks, in waves) -> commit (driver, one Delta commit per table per wave) -> compact (workers)

Exit status: 0 clean, 3 partial (some videos failed, the rest written), 1 failed, 2 bad config or input.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.cli import ArgumentParser, UsageError, add_config_arguments, configure_logging, fail, verbose

if TYPE_CHECKING:
    import argparse

    from pipeline.config import RunConfig

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
    seconds: float = 0.0                                 # wall time of the run, compaction left out
    startup_seconds: float = 0.0                         # until the first inference actor had its model loaded:
                                                         # listing, planning, Ray, actors starting, the model
    compact_seconds: float = 0.0                         # compaction and vacuum after the run
    commits: int = 0                                     # Delta commits of the run's waves, all tables
    errors: list[tuple[str, str]] = field(default_factory=list)  # (uri, error), the first MAX_ERRORS_KEPT
    finished: list[tuple[float, int]] = field(default_factory=list)  # (seconds since the start, frames) per video,
                                                         # when its rows were committed

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
    def frames_per_second(self) -> float | None:
        """Frames per second of processing, start-up left out (it does not grow with the archive); None when the
        processing was too short to give a rate."""
        return self.frames / self.processing_seconds if self.processing_seconds >= MIN_RATE_SECONDS else None


MIN_RATE_SECONDS = 5.0   # processing shorter than this gives no rate: a batch or a commit more or less would swing it


class Progress:
    """Videos and frames done, frames/s and the time left, on stderr: a tqdm bar on a terminal; elsewhere (a
    scheduler's log) a plain line every `every_s` seconds."""

    def __init__(self, videos: int, every_s: float = 30.0):
        self.total, self.videos, self.frames, self.every_s = videos, 0, 0, every_s
        self.printed = time.monotonic()
        self.started: float | None = None   # rates count from the first rows, as the summary's (start-up apart)
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            # the size from COLUMNS/LINES or the terminal, 80x24 where it reports none (tqdm would draw nothing)
            columns, lines = shutil.get_terminal_size()
            self.bar = tqdm(total=videos, unit="video", file=sys.stderr, leave=False, desc="posepipe run",
                            ncols=columns, nrows=lines)

    def update(self, frames: int = 0, videos: int = 0) -> None:
        if self.started is None:
            self.started = time.monotonic()
            if self.bar is not None:
                self.bar.reset()                # tqdm's clock too: its rate and ETA leave out the start-up
        self.frames += frames
        self.videos += videos
        elapsed = time.monotonic() - self.started
        rate = f", {self.frames / elapsed:.1f} frames/s" if elapsed >= 1 else ""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.frames} frames{rate}", refresh=not videos)
            self.bar.update(videos)
        elif time.monotonic() - self.printed >= self.every_s:
            self.printed = time.monotonic()
            left = self.time_left()
            print(f"posepipe: {self.videos}/{self.total} videos, {self.frames} frames{rate}"
                  f"{f', {left} left' if left else ''}", file=sys.stderr, flush=True)

    def time_left(self) -> str | None:
        """The time left at the rate videos finished so far; None until one has finished."""
        if not self.videos or self.started is None:
            return None
        seconds = (time.monotonic() - self.started) / self.videos * (self.total - self.videos)
        return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    """Everything that can fail fast, before Ray starts: input listing, the output path, and the checkpoint's
    metadata."""
    from pipeline.config import ConfigError
    from pipeline.models.checkpoint import read_metadata
    from pipeline.stages.plan import is_topdown
    from pipeline.stages.read import VIDEO_EXTENSIONS, list_videos
    from pipeline.storage import missing_bucket, resolve

    if not config.input or not config.output:
        raise ConfigError("both --input (videos) and --output (table destination) are required, e.g. "
                          "`posepipe run --input videos/ --output poses/`")
    fs, root = resolve(config.output, config.storage_options)
    if fs.isfile(root):
        raise ConfigError(f"--output {config.output!r} is a file; give a folder or URI prefix for the tables (it is "
                          f"created if missing)")
    bucket = missing_bucket(fs, root)
    if bucket:
        raise ConfigError(f"--output {config.output!r}: bucket {bucket!r} does not exist or these credentials cannot "
                          f"see it; create it first (e.g. `aws s3 mb s3://{bucket}`) or fix --output")
    if config.output.startswith("memory://"):
        raise ConfigError(f"--output {config.output!r}: the tables are Delta tables, written by delta-rs, which "
                          f"cannot reach fsspec's in-process memory filesystem; give a folder or an s3://, gs:// or "
                          f"az:// URI")
    refs = list_videos(config.input, config.storage_options)
    if not refs:
        raise ConfigError(f"--input {config.input!r} holds no videos (looked for {', '.join(VIDEO_EXTENSIONS)} files "
                          f"in it and its subfolders); check the path, or convert the videos to one of these")
    try:
        meta = read_metadata(config.model.checkpoint, storage_options=config.storage_options)
    except FileNotFoundError as exc:
        raise ConfigError(f"model.checkpoint {config.model.checkpoint!r} not found ({exc}); `posepipe models list` "
                          f"names the models a run can use, or point --set model.checkpoint=URI at an existing "
                          f"file") from None
    if is_topdown(meta):
        if config.model.flip_test:
            raise ConfigError("model.flip_test applies to bottom-up checkpoints only; the top-down model has none")
        if config.decode.batch_size % config.topdown.detect_every:
            raise ConfigError(f"decode.batch_size ({config.decode.batch_size}) must be a multiple of "
                              f"topdown.detect_every ({config.topdown.detect_every}): a top-down model follows people "
                              f"through each decoded batch in runs of detect_every frames")
    return refs, meta


def run(config: RunConfig) -> RunSummary:
    """Run the whole job; returns the summary (also written to the `runs` table).

    The driver lists and plans, then coordinates: it indexes the blocks of person rows that stream out of Ray
    (`PendingVideos`), hands complete videos to write tasks in waves and commits their files (`RunWriter`), and
    finally writes the run's row and compacts the tables in workers.
    """
    import ray

    from pipeline.config import config_hash
    from pipeline.models.checkpoint import resolve_checkpoint
    from pipeline.stages.assemble import INDEX_COLUMNS, PendingVideos
    from pipeline.stages.commit import RunWriter, compact_tables
    from pipeline.stages.incremental import outputs_hash, plan_videos, refs_table
    from pipeline.stages.plan import build_dataset, init_ray, is_topdown
    from pipeline.stages.write import VIDEO_TABLES, WaveContext, WaveVideo, write_run_row

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    config = config.model_copy(update={"model": config.model.model_copy(
        update={"checkpoint": resolve_checkpoint(config.model.checkpoint)})})  # actors load exactly this file
    refs, meta = check_inputs(config)
    outputs_key = outputs_hash(config, meta)
    plan = plan_videos(config.output, refs_table(refs), outputs_key, config.storage_options,
                       config.write.incremental)
    del refs
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    summary = RunSummary(run_id=run_id, output=config.output, videos_listed=plan.todo.num_rows + plan.skipped,
                         videos_skipped=plan.skipped)
    context = WaveContext(config.output, run_id, config.write.date or started.date(), outputs_key,
                          config.tracking, config.storage_options)
    progress = Progress(plan.todo.num_rows)

    def committed(outcome) -> None:
        summary.frames += outcome.frames
        summary.people += outcome.people
        summary.tracks += outcome.tracks
        if outcome.error:
            summary.videos_failed += 1
            if len(summary.errors) < MAX_ERRORS_KEPT:
                summary.errors.append((outcome.uri, outcome.error))
        else:
            summary.videos_ok += 1
        summary.finished.append((time.perf_counter() - t0, outcome.frames))
        progress.update(videos=1)

    if plan.todo.num_rows:
        init_ray(config, verbose())
        writer = RunWriter(context, config.write.commit_seconds, config.write.wave_videos, config.write.wave_frames,
                           config.write.cpus, config.ray.max_task_retries, committed)
        pending = PendingVideos()
        replace = dict(zip(plan.todo["video_id"].to_pylist(), plan.todo["replace"].to_pylist()))
        size = config.model.frame_size or int(meta["input_size"])
        dataset = build_dataset(plan.todo, config, size, is_topdown(meta), verbose())
        for bundle in dataset.iter_internal_ref_bundles():
            for block_ref in bundle.block_refs:
                frames, done = pending.add(block_ref, ray.get(block_ref).select(list(INDEX_COLUMNS)))
                progress.update(frames=frames)
                for video_id, blocks in done:
                    writer.add(WaveVideo(video_id, replace[video_id]), blocks, len(blocks))
            writer.tick()
        summary.startup_seconds = startup_seconds(pending.ready_at, started, time.perf_counter() - t0)
        for video_id, blocks in pending.take_incomplete():  # only if a stage lost rows: recorded, never dropped
            writer.add(WaveVideo(video_id, replace[video_id], "assemble|Incomplete|some of the video's batches "
                                 "failed every retry (see the Ray log); the frames that arrived are kept"), blocks)
        never = set(replace) - pending.finished  # a decode task that failed every retry (a crash in C) sent nothing
        for ref in plan.todo.filter(pa_is_in(plan.todo["video_id"], sorted(never))).to_pylist():
            writer.add(WaveVideo(ref["video_id"], ref["replace"], f"decode|WorkerDied|its decode task failed all "
                                 f"{config.ray.max_task_retries + 1} attempts because the decode actor died (a crash "
                                 f"in C, an out-of-memory kill); see the Ray log, rerun to retry it", ref), [])
        writer.finish()
        summary.commits = writer.commits
    progress.close()
    summary.seconds = time.perf_counter() - t0
    write_run_row(context, {
        "run_id": run_id, "status": summary.status, "started_at": started,
        "finished_at": dt.datetime.now(dt.timezone.utc), "input": config.input,
        "config_hash": config_hash(config), "config_json": json.dumps(redact(config.model_dump(mode="json"))),
        "code_version": code_version(), "videos_listed": summary.videos_listed, "videos_ok": summary.videos_ok,
        "videos_failed": summary.videos_failed, "videos_skipped": summary.videos_skipped,
        "frames": summary.frames, "people": summary.people, "tracks": summary.tracks,
        "seconds": summary.seconds, "startup_seconds": summary.startup_seconds,
        "frames_per_second": summary.frames_per_second,
    })
    if config.write.compact and plan.todo.num_rows:
        compacting = time.perf_counter()
        compact_tables(config.output, list(VIDEO_TABLES) + ["runs"], config.storage_options,
                       config.write.retention_hours, config.write.orphan_hours, config.write.compact_cpus)
        summary.compact_seconds = time.perf_counter() - compacting
    return summary


MAX_ERRORS_KEPT = 20     # failed videos the summary names (all of them are in the errors table)


def pa_is_in(column, values: list[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_in(column, value_set=pa.array(values, pa.string()))


def startup_seconds(ready_at: float | None, started: dt.datetime, elapsed: float) -> float:
    """Seconds from the run's start until the first inference actor had its model loaded (listing, planning, Ray,
    the actors, the model), within 0 and `elapsed`."""
    if ready_at is None:
        return elapsed
    return min(max(ready_at - started.timestamp(), 0.0), elapsed)


def print_summary(summary: RunSummary) -> None:
    print(f"\nposepipe run {summary.run_id}: {summary.status}")
    print(f"  videos   {summary.videos_ok} ok / {summary.videos_failed} failed / {summary.videos_skipped} skipped "
          f"(of {summary.videos_listed} listed)")
    print(f"  frames   {summary.frames}  people found {summary.people}  tracks {summary.tracks}")
    print(f"  speed    {speed_line(summary)}")
    for uri, error in summary.errors:
        print(f"  failed   {uri}: {error.replace('|', ': ', 2)}")
    if summary.videos_failed > len(summary.errors):
        print(f"  failed   and {summary.videos_failed - len(summary.errors)} more: see the errors table")
    print(f"  output   {summary.output}  (Delta tables: frames, tracks, videos, errors, runs)")


def speed_line(summary: RunSummary) -> str:
    startup = f"after {summary.startup_seconds:.1f} s of start-up (Ray, actors, model)"
    if not summary.videos_listed - summary.videos_skipped:
        return "nothing to process"
    if summary.processing_seconds < MIN_RATE_SECONDS:
        return (f"{summary.frames} frames in {summary.processing_seconds:.1f} s of processing, too short for a rate, "
                f"{startup}")
    return f"{summary.frames_per_second:.1f} frames/s over {summary.processing_seconds:.1f} s of processing, {startup}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("run", __doc__)
    parser.add_argument("--input", help="folder, video file or URI of the archive (s3://bucket/videos); overrides "
                                        "the config's `input`")
    parser.add_argument("--output", help="folder or URI for the Delta tables (s3://bucket/poses); overrides the "
                                         "config's `output`")
    add_config_arguments(parser, "decode.fps=5")
    return parser.parse_args(argv)


def load_run_config(args: argparse.Namespace) -> RunConfig:
    from pipeline.config import RunConfig, load_config

    overrides = list(args.overrides)
    overrides += [f"input={args.input}"] if args.input else []
    overrides += [f"output={args.output}"] if args.output else []
    return load_config(RunConfig, args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    from pipeline.config import ConfigError, dump_config
    from pipeline.models.checkpoint import CheckpointError
    from pipeline.outputs.tables import TableError
    from pipeline.stages.read import InputError

    try:
        config = load_run_config(args)
        if args.show_config:
            print(dump_config(config), end="")
            return EXIT_CLEAN
        summary = run(config)
    except (ConfigError, InputError, CheckpointError, TableError, UsageError) as exc:
        return fail(exc)
    print_summary(summary)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
