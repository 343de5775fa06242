"""Write stage: tracked videos -> Arrow tables (schemas from `pipeline.outputs.schema`) -> hive-partitioned Parquet.

Every table file is named by its video (or run) and written atomically, so a rerun replaces instead of duplicating
and a crash never leaves half a file. Partition values are directory names only (`date=.../source=...`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.outputs.schema import (
    ERRORS_SCHEMA,
    FRAMES_SCHEMA,
    KEYPOINT_COLUMNS,
    RUNS_SCHEMA,
    TRACKS_SCHEMA,
    VIDEOS_SCHEMA,
)
from pipeline.pose.keypoints import NUM_KEYPOINTS
from pipeline.pose.tracking import UNTRACKED, box_from_keypoints
from pipeline.stages.assemble import TrackedVideo
from pipeline.storage import join, resolve, write_parquet_atomic


def partition_path(root: str, table: str, date: str, source: str | None, name: str) -> str:
    parts = [table, f"date={date}"] + ([f"source={source}"] if source is not None else []) + [f"{name}.parquet"]
    return join(root, *parts)


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


class OutputWriter:
    """Writes the tables of one run under an output root (local folder or URI)."""

    def __init__(self, output: str, date: str, storage_options: dict[str, Any] | None = None):
        self.date = date
        self.fs, self.root = resolve(output, storage_options)

    def path(self, table: str, name: str, source: str | None) -> str:
        return partition_path(self.root, table, self.date, source, name)

    def write_video(self, ref: dict[str, Any], video: TrackedVideo) -> tuple[pa.Table, pa.Table]:
        frames_tbl = frames_table(ref, video)
        tracks_tbl = tracks_table(ref, video)
        write_parquet_atomic(self.fs, self.path("frames", ref["video_id"], ref["source"]), frames_tbl)
        write_parquet_atomic(self.fs, self.path("tracks", ref["video_id"], ref["source"]), tracks_tbl)
        return frames_tbl, tracks_tbl

    def write_error(self, ref: dict[str, Any], run_id: str, error: str, frames_ok: int) -> None:
        write_parquet_atomic(self.fs, self.path("errors", ref["video_id"], ref["source"]),
                             error_table(ref, run_id, error, frames_ok))

    def write_videos(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """The `videos` rows of a run (VIDEOS_SCHEMA columns plus `source`), one file per source."""
        by_source: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_source.setdefault(row["source"], []).append(row)
        for source, part in sorted(by_source.items()):
            write_parquet_atomic(self.fs, self.path("videos", run_id, source),
                                 pa.Table.from_pylist(part, schema=VIDEOS_SCHEMA))

    def write_run(self, row: dict[str, Any]) -> None:
        write_parquet_atomic(self.fs, self.path("runs", row["run_id"], None),
                             pa.Table.from_pylist([row], schema=RUNS_SCHEMA))
