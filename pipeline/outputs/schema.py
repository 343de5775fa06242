"""Schemas of the output tables: the one definition the writer, readers, README and tests share.

Each table is a Delta Lake table in its own folder under the output root (`pipeline.outputs.tables`): Parquet files
in hive partitions plus the `_delta_log/` that says which files hold the current rows.

    frames/date=YYYY-MM-DD/source=NAME/part-*.parquet   one row per (video, frame, person)
    tracks/date=YYYY-MM-DD/source=NAME/part-*.parquet   one row per (video, track)
    errors/date=YYYY-MM-DD/source=NAME/part-*.parquet   one row per failed video (its latest run)
    videos/date=YYYY-MM-DD/source=NAME/part-*.parquet   one row per processed video: its current state
    runs/date=YYYY-MM-DD/part-*.parquet                 one row per run

A video's rows in frames, tracks, errors and videos are always those of the run that last processed it (`videos.
run_id`); the date partition is that run's. Keypoints are wide columns `<name>_x`, `<name>_y`, `<name>_score`
(float32, original-image pixels, pixel centres at integer coordinates); a keypoint that was not found has null x/y and
score 0. Wide columns keep every engine (pandas, DuckDB, Spark, Trino) on plain types;
`pipeline.outputs.query.to_long` gives one row per keypoint.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.pose.keypoints import KEYPOINT_NAMES

PARTITION_COLUMNS = ("date", "source")
# Types of the partition values, which live in directory names only: readers must be told them, or a source named
# "01" comes back as the integer 1.
PARTITION_SCHEMA = pa.schema([pa.field("date", pa.date32()), pa.field("source", pa.string())])

KEYPOINT_COLUMNS: tuple[str, ...] = tuple(
    f"{name}_{part}" for name in KEYPOINT_NAMES for part in ("x", "y", "score")
)

_VIDEO_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),  # stable id: sanitised file stem + hash of the uri
    pa.field("uri", pa.string(), nullable=False),       # where the video was read from
]

FRAMES_SCHEMA = pa.schema(
    _VIDEO_FIELDS
    + [
        pa.field("frame_index", pa.int64(), nullable=False),   # index in the decoded stream, 0-based
        pa.field("timestamp_s", pa.float64(), nullable=False),  # presentation time of the frame
        pa.field("width", pa.int32(), nullable=False),         # original frame size, pixels
        pa.field("height", pa.int32(), nullable=False),
        pa.field("person_index", pa.int32(), nullable=False),  # order of the person within the frame (by score)
        pa.field("track_id", pa.int64(), nullable=False),      # stable within a video, 0-based; -1: not part of a
                                                               # track (seen in < tracking.min_hits frames, or its
                                                               # people's mean score < tracking.min_track_score)
        pa.field("person_score", pa.float32(), nullable=False),
        pa.field("bbox_x", pa.float32()),                      # box of found keypoints: left, top, width, height
        pa.field("bbox_y", pa.float32()),
        pa.field("bbox_w", pa.float32()),
        pa.field("bbox_h", pa.float32()),
    ]
    + [pa.field(col, pa.float32(), nullable=not col.endswith("_score")) for col in KEYPOINT_COLUMNS]
)

TRACKS_SCHEMA = pa.schema(  # confirmed tracks only (track_id >= 0)
    _VIDEO_FIELDS
    + [
        pa.field("track_id", pa.int64(), nullable=False),
        pa.field("first_frame", pa.int64(), nullable=False),
        pa.field("last_frame", pa.int64(), nullable=False),
        pa.field("first_time_s", pa.float64(), nullable=False),
        pa.field("last_time_s", pa.float64(), nullable=False),
        pa.field("num_frames", pa.int64(), nullable=False),     # frames the person was seen in
        pa.field("mean_score", pa.float32(), nullable=False),   # mean person score over those frames
        pa.field("min_x", pa.float32()),                        # extent of all its keypoints, pixels
        pa.field("min_y", pa.float32()),
        pa.field("max_x", pa.float32()),
        pa.field("max_y", pa.float32()),
    ]
)

ERRORS_SCHEMA = pa.schema(
    _VIDEO_FIELDS
    + [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),       # open | decode | infer | write
        pa.field("error_type", pa.string(), nullable=False),  # exception class or a short code, e.g. "Timeout"
        pa.field("message", pa.string(), nullable=False),
        pa.field("frames_ok", pa.int64(), nullable=False),    # frames decoded before the error (kept in `frames`)
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

VIDEOS_SCHEMA = pa.schema(  # one row per processed video: the run whose rows the other tables hold, and its outcome
    _VIDEO_FIELDS
    + [
        pa.field("run_id", pa.string(), nullable=False),     # the run that processed it last (its rows are that run's)
        pa.field("status", pa.string(), nullable=False),     # ok | failed (a failed video is retried by every run)
        pa.field("size_bytes", pa.int64(), nullable=False),  # the file as processed: size and version (ETag on
        pa.field("version", pa.string(), nullable=False),    # object stores, else mtime); a change reprocesses it
        pa.field("outputs_hash", pa.string(), nullable=False),  # the settings and model that shaped its rows
        pa.field("processed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("frames", pa.int64(), nullable=False),      # frames decoded
        pa.field("people", pa.int64(), nullable=False),      # rows in `frames`
        pa.field("tracks", pa.int64(), nullable=False),      # rows in `tracks`
        pa.field("duration_s", pa.float64()),                # of the whole video; null when it did not open
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),                       # display size, pixels
        pa.field("height", pa.int32()),
        pa.field("error", pa.string()),                      # `stage: type: message` of a failed video (details
                                                             # in `errors`)
    ]
)

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),       # clean | partial | failed
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("config_json", pa.string(), nullable=False),  # the resolved config, credentials removed
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("videos_listed", pa.int64(), nullable=False),
        pa.field("videos_ok", pa.int64(), nullable=False),
        pa.field("videos_failed", pa.int64(), nullable=False),
        pa.field("videos_skipped", pa.int64(), nullable=False),  # unchanged since the run that processed them
        pa.field("frames", pa.int64(), nullable=False),
        pa.field("people", pa.int64(), nullable=False),
        pa.field("tracks", pa.int64(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),                # wall time of the run
        pa.field("startup_seconds", pa.float64(), nullable=False),        # until the first model was loaded
        pa.field("frames_per_second", pa.float64()),    # frames / (seconds - startup_seconds); null under 5 s
    ]
)

TABLES = {"frames": FRAMES_SCHEMA, "tracks": TRACKS_SCHEMA, "errors": ERRORS_SCHEMA, "videos": VIDEOS_SCHEMA,
          "runs": RUNS_SCHEMA}
TABLE_PARTITIONS = {"frames": PARTITION_COLUMNS, "tracks": PARTITION_COLUMNS, "errors": PARTITION_COLUMNS,
                    "videos": PARTITION_COLUMNS, "runs": ("date",)}
