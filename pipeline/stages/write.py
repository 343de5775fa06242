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
from pipeline.pose.tracking import UNTRACKED
from pipeline.stages.assemble import TrackedFrame
from pipeline.storage import join, resolve, write_parquet_atomic


def partition_path(root: str, table: str, date: str, source: str | None, name: str) -> str:
    parts = [table, f"date={date}"] + ([f"source={source}"] if source is not None else []) + [f"{name}.parquet"]
    return join(root, *parts)


def frames_table(ref: dict[str, Any], frames: list[TrackedFrame]) -> pa.Table:
    """One row per (frame, person) of a tracked video."""
    people = [(f, p) for f in frames for p in range(len(f.track_ids))]
    n = len(people)
    keypoints = (np.stack([f.keypoints[p] for f, p in people]) if n
                 else np.zeros((0, NUM_KEYPOINTS, 3), np.float32))          # (N, K, 3)
    found = keypoints[..., 2] > 0                                            # (N, K)
    xs = np.where(found, keypoints[..., 0], np.nan)
    ys = np.where(found, keypoints[..., 1], np.nan)
    with np.errstate(all="ignore"):
        x0, y0 = np.nanmin(xs, axis=1, initial=np.inf), np.nanmin(ys, axis=1, initial=np.inf)
        x1, y1 = np.nanmax(xs, axis=1, initial=-np.inf), np.nanmax(ys, axis=1, initial=-np.inf)
    has_box = found.any(axis=1)
    columns: dict[str, Any] = {
        "video_id": [ref["video_id"]] * n,
        "uri": [ref["uri"]] * n,
        "frame_index": [f.frame_index for f, _ in people],
        "timestamp_s": [f.timestamp_s for f, _ in people],
        "width": [f.width for f, _ in people],
        "height": [f.height for f, _ in people],
        "person_index": [p for _, p in people],
        "track_id": [int(f.track_ids[p]) for f, p in people],
        "person_score": [float(f.scores[p]) for f, p in people],
        "bbox_x": pa.array(x0, mask=~has_box, type=pa.float32()),
        "bbox_y": pa.array(y0, mask=~has_box, type=pa.float32()),
        "bbox_w": pa.array(x1 - x0, mask=~has_box, type=pa.float32()),
        "bbox_h": pa.array(y1 - y0, mask=~has_box, type=pa.float32()),
    }
    for k in range(NUM_KEYPOINTS):
        x_col, y_col, s_col = KEYPOINT_COLUMNS[3 * k:3 * k + 3]
        columns[x_col] = pa.array(keypoints[:, k, 0], mask=~found[:, k], type=pa.float32())
        columns[y_col] = pa.array(keypoints[:, k, 1], mask=~found[:, k], type=pa.float32())
        columns[s_col] = pa.array(np.where(found[:, k], keypoints[:, k, 2], 0.0), type=pa.float32())
    return pa.Table.from_pydict(columns, schema=FRAMES_SCHEMA)


def tracks_table(frames: pa.Table) -> pa.Table:
    """One row per track, summarised from the frame rows of one video; untracked people (track_id -1) have none."""
    df = frames.to_pandas()
    df = df[df["track_id"] != UNTRACKED]
    if df.empty:
        return TRACKS_SCHEMA.empty_table()
    xs = df[[c for c in KEYPOINT_COLUMNS if c.endswith("_x")]]
    ys = df[[c for c in KEYPOINT_COLUMNS if c.endswith("_y")]]
    df = df.assign(_min_x=xs.min(axis=1), _min_y=ys.min(axis=1), _max_x=xs.max(axis=1), _max_y=ys.max(axis=1))
    summary = df.groupby("track_id", sort=True).agg(
        video_id=("video_id", "first"), uri=("uri", "first"),
        first_frame=("frame_index", "min"), last_frame=("frame_index", "max"),
        first_time_s=("timestamp_s", "min"), last_time_s=("timestamp_s", "max"),
        num_frames=("frame_index", "nunique"), mean_score=("person_score", "mean"),
        min_x=("_min_x", "min"), min_y=("_min_y", "min"), max_x=("_max_x", "max"), max_y=("_max_y", "max"),
    ).reset_index()
    table = pa.Table.from_pandas(summary[TRACKS_SCHEMA.names], schema=TRACKS_SCHEMA, preserve_index=False)
    return table.replace_schema_metadata(None)  # no pandas metadata: files read the same in every engine


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

    def write_video(self, ref: dict[str, Any], frames: list[TrackedFrame]) -> tuple[pa.Table, pa.Table]:
        frames_tbl = frames_table(ref, frames)
        tracks_tbl = tracks_table(frames_tbl)
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
