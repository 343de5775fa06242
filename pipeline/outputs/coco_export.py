"""COCO keypoint-results export of a video's frames rows, so standard tools (pycocotools COCOeval) can score them.

One result per (frame, person): image_id = frame_index (+ an optional offset), category_id = 1 (person),
keypoints = [x, y, score] * 17 with 0, 0, 0 for a keypoint that was not found, score = person_score. `track_id` is
kept as an extra key, which pycocotools carries through untouched. Ground truth for such results names its images by
frame index too (or frame index + 1: pass image_id_offset=1).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from pipeline.outputs.query import connect, keypoint_array
from pipeline.pose.keypoints import PERSON_CATEGORY_ID
from pipeline.storage import resolve, write_bytes_atomic

logger = logging.getLogger(__name__)


def coco_results(frames: pd.DataFrame, image_id_offset: int = 0) -> list[dict]:
    """Frames rows (one video; `SELECT * FROM frames`) -> COCO keypoint results, in frame then person order.

    image_id = frame_index + image_id_offset (1 matches ground truth that numbers frames from 1, as
    `pipeline.synthetic.videos.video_ground_truth_to_coco` does).

    The same format as `pipeline.evaluation.metrics.people_to_results`, built here without it so that exporting does not
    import torch (seconds of start-up for a query tool).
    """
    if frames["video_id"].nunique() > 1:
        raise ValueError(f"expected the rows of one video, got {frames['video_id'].nunique()} videos: image ids are "
                         f"frame indices, so filter with WHERE video_id = ... first")
    frames = frames.sort_values(["frame_index", "person_index"], kind="stable")
    keypoints = keypoint_array(frames).astype(np.float64)                   # (N, K, 3), NaN x/y where missing
    missing = ~np.isfinite(keypoints[..., :2]).all(axis=-1) | (keypoints[..., 2] <= 0)   # (N, K)
    keypoints[missing] = 0.0
    flat = np.round(keypoints.reshape(len(frames), -1), 2)                 # (N, 3K)
    return [{"image_id": int(image_id) + image_id_offset, "category_id": PERSON_CATEGORY_ID,
             "keypoints": kp.tolist(), "score": float(score), "track_id": int(track_id)}
            for image_id, kp, score, track_id in zip(frames["frame_index"], flat, frames["person_score"],
                                                     frames["track_id"])]


def video_results(output: str | duckdb.DuckDBPyConnection, video_id: str, image_id_offset: int = 0,
                  storage_options: dict[str, Any] | None = None) -> list[dict]:
    """COCO keypoint results of one video of an output root (or of a connection from `pipeline.outputs.query.connect`)."""
    con = output if isinstance(output, duckdb.DuckDBPyConnection) else connect(output, storage_options)
    frames = con.execute("SELECT * FROM frames WHERE video_id = ?", [video_id]).df()
    if frames.empty:
        known = con.execute("SELECT count(*) FROM (SELECT DISTINCT video_id FROM tracks UNION "
                            "SELECT DISTINCT video_id FROM errors) WHERE video_id = ?", [video_id]).fetchone()[0]
        if not known:
            raise KeyError(f"video_id {video_id!r} is not in the output; list ids with "
                           f"`posepipe query OUTPUT \"SELECT DISTINCT video_id FROM tracks\"`")
        logger.info("video %s has no people: empty results", video_id)
        return []
    return coco_results(frames, image_id_offset)


def write_coco_results(results: list[dict], uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write results as a JSON list (local path or fsspec URI), atomically."""
    fs, path = resolve(uri, storage_options)
    write_bytes_atomic(fs, path, json.dumps(results).encode())
