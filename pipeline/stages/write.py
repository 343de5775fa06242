"""Write stage, in Ray workers: complete videos' rows -> tracked -> Arrow tables (schemas from
`pipeline.outputs.schema`) -> Parquet data files of the Delta tables, for the driver to commit.

`write_wave` is the remote task: it gathers a wave of complete videos from the object-store blocks that hold their
rows, tracks each one whole, builds its frames, tracks, errors and videos rows, and writes them as one file per
table and partition (`pipeline.outputs.tables.write_files`). It returns the files and each video's counts; the
driver's commit makes the files visible (`pipeline.stages.commit`). A retried task writes new files; the files of a
failed attempt are never committed, and vacuuming removes them.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.outputs.schema import (
    ERRORS_SCHEMA,
    FRAMES_SCHEMA,
    KEYPOINT_COLUMNS,
    PARTITION_SCHEMA,
    RUNS_SCHEMA,
    TRACKS_SCHEMA,
    VIDEOS_SCHEMA,
)
from pipeline.outputs.tables import Changes, DataFile, TableCommitter, replace_files, write_files
from pipeline.pose.keypoints import NUM_KEYPOINTS
from pipeline.pose.tracking import UNTRACKED, TrackerConfig, box_from_keypoints
from pipeline.stages.assemble import TrackedVideo, VideoRows, collect_videos, track
from pipeline.stages.batch import VideoHeader

VIDEO_TABLES = ("frames", "tracks", "errors", "videos")   # the tables a wave writes, in commit order: the videos
                                                          # table (what later runs read as done) last


def frames_table(ref: dict[str, Any], video: TrackedVideo) -> pa.Table:
    """One row per (frame, person) of a tracked video, straight from its arrays."""
    n = len(video.frame_index)
    keypoints = video.keypoints                                              # (N, K, 3)
    found = keypoints[..., 2] > 0                                            # (N, K)
    box = box_from_keypoints(keypoints)                                      # (N, 4) x0, y0, x1, y1; NaN: none
    no_box = np.isnan(box[:, 0])
    columns: dict[str, Any] = {
        "video_id": pa.repeat(ref["video_id"], n),
        "uri": pa.repeat(ref["uri"], n),
        "frame_index": video.frame_index,
        "timestamp_s": video.timestamp_s,
        "width": video.width,
        "height": video.height,
        "person_index": video.person_index,
        "track_id": video.track_id,
        "person_score": video.person_score,
        "bbox_x": pa.array(box[:, 0], mask=no_box, type=pa.float32()),
        "bbox_y": pa.array(box[:, 1], mask=no_box, type=pa.float32()),
        "bbox_w": pa.array(box[:, 2] - box[:, 0], mask=no_box, type=pa.float32()),
        "bbox_h": pa.array(box[:, 3] - box[:, 1], mask=no_box, type=pa.float32()),
    }
    for k in range(NUM_KEYPOINTS):
        x_col, y_col, s_col = KEYPOINT_COLUMNS[3 * k:3 * k + 3]
        columns[x_col] = pa.array(keypoints[:, k, 0], mask=~found[:, k], type=pa.float32())
        columns[y_col] = pa.array(keypoints[:, k, 1], mask=~found[:, k], type=pa.float32())
        columns[s_col] = pa.array(np.where(found[:, k], keypoints[:, k, 2], 0.0), type=pa.float32())
    return pa.Table.from_pydict(columns, schema=FRAMES_SCHEMA)


def tracks_table(ref: dict[str, Any], video: TrackedVideo) -> pa.Table:
    """One row per track of a tracked video; untracked people (track_id -1) have none."""
    tracked = video.track_id != UNTRACKED
    ids, track = np.unique(video.track_id[tracked], return_inverse=True)      # (T,), (M,) row -> track
    if not len(ids):
        return TRACKS_SCHEMA.empty_table()
    frame, time = video.frame_index[tracked], video.timestamp_s[tracked]
    keypoints = video.keypoints[tracked]
    found = keypoints[..., 2] > 0
    with np.errstate(all="ignore"):  # rows without a found keypoint give NaN, which fmin/fmax skip
        xs, ys = np.where(found, keypoints[..., 0], np.nan), np.where(found, keypoints[..., 1], np.nan)
        row_extent = np.stack([np.nanmin(xs, 1), np.nanmin(ys, 1), np.nanmax(xs, 1), np.nanmax(ys, 1)], 1)

    def reduce(ufunc, values: np.ndarray, start: float) -> np.ndarray:
        out = np.full(len(ids), start, np.float64)
        ufunc.at(out, track, values)
        return out

    extent = [reduce(np.fmin if i < 2 else np.fmax, row_extent[:, i], np.nan) for i in range(4)]
    rows = np.bincount(track)
    frames_seen = np.bincount(np.unique(np.stack([track, frame], 1), axis=0)[:, 0], minlength=len(ids))
    columns = {
        "video_id": pa.repeat(ref["video_id"], len(ids)), "uri": pa.repeat(ref["uri"], len(ids)), "track_id": ids,
        "first_frame": reduce(np.minimum, frame, np.inf).astype(np.int64),
        "last_frame": reduce(np.maximum, frame, -np.inf).astype(np.int64),
        "first_time_s": reduce(np.minimum, time, np.inf), "last_time_s": reduce(np.maximum, time, -np.inf),
        "num_frames": frames_seen,
        "mean_score": np.bincount(track, weights=video.person_score[tracked]) / rows,
    }
    for name, values in zip(("min_x", "min_y", "max_x", "max_y"), extent):
        columns[name] = pa.array(values, mask=np.isnan(values), type=pa.float32())
    return pa.Table.from_pydict(columns, schema=TRACKS_SCHEMA)


def error_table(ref: dict[str, Any], run_id: str, error: str, frames_ok: int) -> pa.Table:
    """The one errors row of a failed video; `error` is `stage|type|message`."""
    stage, _, rest = error.partition("|")
    error_type, _, message = rest.partition("|")
    return pa.Table.from_pylist([{
        "video_id": ref["video_id"], "uri": ref["uri"], "run_id": run_id, "stage": stage,
        "error_type": error_type or "Error", "message": message or error, "frames_ok": frames_ok,
        "time": dt.datetime.now(dt.timezone.utc),
    }], schema=ERRORS_SCHEMA)


def readable_error(error: str) -> str:
    """`stage|type|message` as people read it: `stage: type: message`."""
    return error.replace("|", ": ", 2)


def video_table(ref: dict[str, Any], run_id: str, outputs_hash: str, header: VideoHeader, error: str,
                frames: int, people: int, tracks: int) -> pa.Table:
    """The one videos row of a processed video: the run that wrote its rows, the file it read, what came out."""
    return pa.Table.from_pylist([{
        "video_id": ref["video_id"], "uri": ref["uri"], "run_id": run_id, "status": "failed" if error else "ok",
        "size_bytes": int(ref.get("size") or 0), "version": str(ref.get("version") or ""),
        "outputs_hash": outputs_hash, "processed_at": dt.datetime.now(dt.timezone.utc),
        "frames": frames, "people": people, "tracks": tracks,
        "duration_s": header.duration_s if header.opened else None, "fps": header.fps if header.opened else None,
        "width": header.width or None, "height": header.height or None,
        "error": readable_error(error) if error else None,
    }], schema=VIDEOS_SCHEMA)


def video_tables(ref: dict[str, Any], tracked: TrackedVideo, run_id: str, outputs_hash: str,
                 header: VideoHeader = VideoHeader(), error: str = "") -> dict[str, pa.Table]:
    """Every table's rows of one tracked video (a video that never decoded has only its errors and videos rows)."""
    frames, tracks = frames_table(ref, tracked), tracks_table(ref, tracked)
    tables = {"frames": frames, "tracks": tracks,
              "videos": video_table(ref, run_id, outputs_hash, header, error, tracked.num_frames, frames.num_rows,
                                    tracks.num_rows)}
    tables["errors"] = error_table(ref, run_id, error, tracked.num_frames) if error else ERRORS_SCHEMA.empty_table()
    return tables


def with_partitions(table: pa.Table, date: dt.date, source: str) -> pa.Table:
    n = table.num_rows
    return (table.append_column(PARTITION_SCHEMA.field("date"), pa.array([date] * n, pa.date32()))
            .append_column(PARTITION_SCHEMA.field("source"), pa.array([source] * n, pa.string())))


@dataclass(frozen=True)
class WaveContext:
    """What every wave of a run shares."""
    output: str
    run_id: str
    date: dt.date                       # the run's partition date
    outputs_hash: str                   # `pipeline.stages.incremental.outputs_hash` of the run's settings
    tracking: TrackerConfig = TrackerConfig()
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WaveVideo:
    """A video of a wave, as the driver hands it over."""
    video_id: str
    replace: bool = False               # earlier rows may exist: the commit removes them
    error: str = ""                     # why its rows are incomplete (`stage|type|message`), when the driver knows
    ref: dict[str, Any] | None = None   # the listed video, for one whose end marker never came (else from it)


@dataclass(frozen=True)
class VideoOutcome:
    """What a wave did with one video: the counts the run's summary adds up."""
    video_id: str
    uri: str
    frames: int
    people: int
    tracks: int
    error: str                          # `stage|type|message`, "" when clean


@dataclass
class WaveResult:
    changes: dict[str, Changes]         # per table of VIDEO_TABLES: files written, the wave's videos
    outcomes: list[VideoOutcome]
    seconds: float                      # the task's own time: tracking and writing


def write_tables(context: WaveContext, per_video: list[tuple[dict[str, Any], dict[str, pa.Table]]],
                 replace: set[str]) -> dict[str, Changes]:
    """Write the rows of a wave's videos (`video_tables` of each) as data files: one per table and partition, rows
    in video, frame and person order. Returns each table's Changes."""
    changes = {}
    video_ids = {ref["video_id"] for ref, _ in per_video}
    for name in VIDEO_TABLES:
        parts = [with_partitions(tables[name], context.date, ref["source"]) for ref, tables in per_video
                 if tables[name].num_rows]
        files: list[DataFile] = []
        if parts:
            table = pa.concat_tables(parts)
            keys = [("source", "ascending"), ("video_id", "ascending")]
            if name == "frames":
                keys += [("frame_index", "ascending"), ("person_index", "ascending")]
            table = table.take(pc.sort_indices(table, sort_keys=keys))
            files = write_files(context.output, name, table, context.run_id, context.storage_options)
        changes[name] = Changes(files, set(video_ids), replace & video_ids)
    return changes


def write_wave(context: WaveContext, videos: list[WaveVideo], *blocks: Any) -> WaveResult:
    """The Ray task of a wave: gather, track and write `videos` from the blocks of person rows that hold them."""
    started = time.perf_counter()
    rows = collect_videos(blocks, [v.video_id for v in videos])
    per_video, outcomes = [], []
    for wave_video in videos:
        video: VideoRows = rows[wave_video.video_id]
        ref = video.ref if video.ref.get("uri") else dict(wave_video.ref or {})
        error = video.error or wave_video.error
        tracked = track(video, context.tracking)
        tables = video_tables(ref, tracked, context.run_id, context.outputs_hash, video.header, error)
        per_video.append((ref, tables))
        outcomes.append(VideoOutcome(ref["video_id"], ref["uri"], tracked.num_frames, tables["frames"].num_rows,
                                     tables["tracks"].num_rows, error))
    changes = write_tables(context, per_video, {v.video_id for v in videos if v.replace})
    return WaveResult(changes, outcomes, time.perf_counter() - started)


def write_videos_now(context: WaveContext, videos: list[tuple[dict[str, Any], TrackedVideo]],
                     errors: dict[str, str] | None = None, headers: dict[str, VideoHeader] | None = None) -> None:
    """Write and commit tracked videos in this process, replacing their earlier rows: for tools and tests that
    make an output without running the pipeline (one commit per table, as a wave of a run). `errors` and `headers`
    are by video id."""
    errors, headers = errors or {}, headers or {}
    per_video = [(ref, video_tables(ref, tracked, context.run_id, context.outputs_hash,
                                    headers.get(ref["video_id"], VideoHeader()), errors.get(ref["video_id"], "")))
                 for ref, tracked in videos]
    changes = write_tables(context, per_video, {ref["video_id"] for ref, _ in videos})

    def replace(name: str, video_ids: list[str], version: int):
        return replace_files(context.output, name, video_ids, context.run_id, version, context.storage_options)

    for name in VIDEO_TABLES:
        TableCommitter(context.output, name, context.run_id, context.storage_options, replace).commit(changes[name])


def write_run_row(context: WaveContext, row: dict[str, Any]) -> None:
    """The run's one row of the runs table, written and committed from the driver (one small file per run)."""
    table = pa.Table.from_pylist([row], schema=RUNS_SCHEMA)
    table = table.append_column(PARTITION_SCHEMA.field("date"), pa.array([context.date], pa.date32()))
    files = write_files(context.output, "runs", table, context.run_id, context.storage_options)
    TableCommitter(context.output, "runs", context.run_id, context.storage_options,
                   lambda *args: None).commit(Changes(files))  # type: ignore[arg-type, return-value]
