"""`posepipe run`: a folder or archive of videos in, keypoint tracks as hive-partitioned Parquet out.

    posepipe run --input videos/ --output poses/
    posepipe run --input s3://bucket/videos --output s3://bucket/poses --set decode.fps=5
    posepipe run --input videos/ --output poses/ --config configs/cluster.yaml --show-config

    read (driver lists refs) -> decode (CPU actors, decord) -> infer (GPU/CPU actors: network, peaks, grouping)
    -> assemble per video (driver) -> track -> write Parquet (atomic, one file per video and table)

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
    from pipeline.storage import resolve

    if not config.input or not config.output:
        raise ConfigError("both --input (videos) and --output (Parquet destination) are required, e.g. "
                          "`posepipe run --input videos/ --output poses/`")
    fs, root = resolve(config.output, config.storage_options)
    if fs.isfile(root):
        raise ConfigError(f"--output {config.output!r} is a file; give a folder or URI prefix for the tables (it is "
                          f"created if missing)")
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
    """Run the whole job; returns the summary (also written to the `runs` table)."""
    from pipeline.config import config_hash
    from pipeline.models.checkpoint import resolve_checkpoint
    from pipeline.stages.assemble import VideoAssembler, VideoRows, track
    from pipeline.stages.manifest import Manifest, outputs_hash
    from pipeline.stages.plan import build_dataset, init_ray, is_topdown
    from pipeline.stages.write import OutputWriter

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

    videos = [video_row(ref, run_id, "skipped", manifest.entries[ref["uri"]]["run_id"]) for ref in skipped]

    def finish(ref: dict, video) -> None:
        tracked = track(video, config.tracking)
        paths, written, people, tracks = video_paths(ref), [], 0, 0
        if tracked.num_frames or not video.error:  # a video that never decoded has no frame tables, only its error
            frames_tbl, tracks_tbl = writer.write_video(ref, tracked)
            written += paths[:2]
            people, tracks = frames_tbl.num_rows, tracks_tbl.num_rows
            summary.frames += tracked.num_frames
            summary.people += people
            summary.tracks += tracks
        rows_run_id = run_id if written else None  # frames and tracks written (the errors file comes below)
        videos.append(video_row(ref, run_id, "failed" if video.error else "ok", rows_run_id, video,
                                tracked.num_frames, people, tracks))
        if video.error:
            writer.write_error(ref, run_id, video.error, tracked.num_frames)
            written.append(paths[2])
            summary.videos_failed += 1
            summary.errors.append((ref["uri"], video.error))
        else:
            summary.videos_ok += 1
        manifest.remove(manifest.record(ref, outputs_key, written, failed=bool(video.error), run_id=run_id))
        manifest.maybe_save()
        summary.finished.append((time.perf_counter() - t0, tracked.num_frames))

    if refs:
        init_ray(config, verbose())
        assembler = VideoAssembler()
        size = config.model.frame_size or int(meta["input_size"])
        dataset = build_dataset(refs, config, size, is_topdown(meta), verbose())
        progress = Progress(len(refs))
        for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
            summary.startup_seconds = summary.startup_seconds or time.perf_counter() - t0
            done = assembler.add(batch)
            # every frame has a row with person_index 0, or its one placeholder row (-1) when nobody is in it
            progress.update(int(((batch["person_index"] <= 0) & ~batch["is_end"]).sum()), len(done))
            for video in done:
                finish(by_id[video.video_id], video)
        progress.close()
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


def video_row(ref: dict, run_id: str, status: str, rows_run_id: str | None, video=None, frames: int = 0,
              people: int = 0, tracks: int = 0) -> dict[str, Any]:
    """One row of the `videos` table (plus its `source` partition); `rows_run_id` is the run whose rows the frames
    and tracks tables hold for it. `video` is the assembled VideoRows of a processed video; a skipped one has no
    counts."""
    row = {"video_id": ref["video_id"], "uri": ref["uri"], "source": ref["source"], "run_id": run_id,
           "status": status, "rows_run_id": rows_run_id, "size_bytes": int(ref["size"])}
    if video is None:
        return row
    header = video.header
    return row | {
        "frames": frames, "people": people, "tracks": tracks,
        "duration_s": header.duration_s if header.opened else None, "fps": header.fps if header.opened else None,
        "width": header.width or None, "height": header.height or None,
        "error": readable_error(video.error) if video.error else None,
    }


def readable_error(error: str) -> str:
    """`stage|type|message` as people read it: `stage: type: message`."""
    return error.replace("|", ": ", 2)


def print_summary(summary: RunSummary) -> None:
    print(f"\nposepipe run {summary.run_id}: {summary.status}")
    print(f"  videos   {summary.videos_ok} ok / {summary.videos_failed} failed / {summary.videos_skipped} skipped "
          f"(of {summary.videos_listed} listed)")
    print(f"  frames   {summary.frames}  people found {summary.people}  tracks {summary.tracks}")
    print(f"  speed    {summary.frames_per_second:.1f} frames/s over {summary.processing_seconds:.1f} s of processing, "
          f"after {summary.startup_seconds:.1f} s of start-up (Ray, actors, model)")
    for uri, error in summary.errors:
        print(f"  failed   {uri}: {readable_error(error)}")
    print(f"  output   {summary.output}  (tables: frames, tracks, videos, errors, runs)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("run", __doc__)
    parser.add_argument("--input", help="folder, video file or URI of the archive (s3://bucket/videos); overrides "
                                        "the config's `input`")
    parser.add_argument("--output", help="folder or URI for the Parquet tables; overrides the config's `output`")
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
    from pipeline.stages.manifest import ManifestError
    from pipeline.stages.read import InputError

    try:
        config = load_run_config(args)
        if args.show_config:
            print(dump_config(config), end="")
            return EXIT_CLEAN
        summary = run(config)
    except (ConfigError, InputError, CheckpointError, ManifestError, UsageError) as exc:
        return fail(exc)
    print_summary(summary)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
