"""Tracking evaluation: CLEAR-MOT (MOTA) and identity (IDF1) metrics of keypoint tracks against ground truth.

A frame is `frame_index -> (ids (P,), keypoints (P, K, 3))`, keypoints [x, y, score_or_visibility] in image pixels,
missing keypoint x = y = NaN and score 0 (load_ground_truth converts COCO's 0,0,0 to that). Per frame, ground-truth
and predicted people are matched by OKS (ground truth as the reference, as in COCO) or by keypoint-box IoU; a pair
below `threshold` cannot match. motmetrics then counts misses, false positives and identity switches.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import motmetrics as mm
import numpy as np

from pipeline.pose.keypoints import NUM_KEYPOINTS
from pipeline.pose.tracking import box_from_keypoints, box_iou, oks_matrix

logger = logging.getLogger(__name__)

Frames = Mapping[int, tuple[np.ndarray, np.ndarray]]

_METRICS = {  # our key -> motmetrics name
    "mota": "mota",
    "idf1": "idf1",
    "id_switches": "num_switches",
    "precision": "precision",
    "recall": "recall",
    "false_positives": "num_false_positives",
    "misses": "num_misses",
    "matches": "num_matches",
}


def _frame(frames: Frames, frame_index: int, name: str, num_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    ids, keypoints = frames.get(frame_index, (np.zeros(0, np.int64), np.zeros((0, num_keypoints, 3))))
    ids, keypoints = np.asarray(ids, np.int64).reshape(-1), np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (num_keypoints, 3) or len(ids) != len(keypoints):
        raise ValueError(f"{name} frame {frame_index}: expected ids (P,) and keypoints (P, {num_keypoints}, 3), "
                         f"got {ids.shape} and {keypoints.shape}")
    tracked = ids[ids >= 0]  # negative: untracked people (pipeline.pose.tracking.UNTRACKED), any number of them
    if len(np.unique(tracked)) != len(tracked):
        raise ValueError(f"{name} frame {frame_index}: track ids must be unique within a frame, got {ids.tolist()}")
    return ids, keypoints


def _num_keypoints(*frame_sets: Frames) -> int:
    for frames in frame_sets:
        for _, keypoints in frames.values():
            shape = np.shape(keypoints)
            if len(shape) == 3:
                return shape[1]
    return NUM_KEYPOINTS


def evaluate_tracks(gt_frames: Frames, pred_frames: Frames, distance: str = "oks", threshold: float = 0.5) -> dict:
    """MOTA, IDF1 and friends of predicted tracks against ground truth.

    Args:
        gt_frames, pred_frames: frame_index -> (ids (P,), keypoints (P, K, 3)). Frames present in only one of them
            count with no people on the other side. Ground-truth people without a labelled keypoint are left out
            (as COCO ignores them); predicted people with a negative id (untracked) are left out.
        distance: "oks" or "iou" (box of the keypoints).
        threshold: the least OKS / IoU for a ground-truth and a predicted person to match.
    Returns:
        {"mota", "idf1", "id_switches", "num_frames", "precision", "recall", "false_positives", "misses",
         "matches"} as plain floats / ints.
    """
    if distance not in ("oks", "iou"):
        raise ValueError(f"expected distance 'oks' or 'iou', got {distance!r}")
    k = _num_keypoints(gt_frames, pred_frames)
    acc = mm.MOTAccumulator(auto_id=False)
    frame_indices = sorted(set(gt_frames) | set(pred_frames))
    for t in frame_indices:
        gt_ids, gt_kp = _frame(gt_frames, t, "ground truth", k)
        pred_ids, pred_kp = _frame(pred_frames, t, "prediction", k)
        labelled = (gt_kp[..., 2] > 0).any(axis=1)  # (P,)
        gt_ids, gt_kp = gt_ids[labelled], gt_kp[labelled]
        tracked = pred_ids >= 0  # (Q,)
        pred_ids, pred_kp = pred_ids[tracked], pred_kp[tracked]
        if distance == "oks":
            sim = oks_matrix(gt_kp, pred_kp)  # (P, Q)
        else:
            sim = box_iou(box_from_keypoints(gt_kp), box_from_keypoints(pred_kp))  # (P, Q)
        dist = np.where(sim >= threshold, 1.0 - sim, np.nan)  # (P, Q), NaN = cannot match
        acc.update(gt_ids.tolist(), pred_ids.tolist(), dist, frameid=t)
    summary = mm.metrics.create().compute(acc, metrics=list(_METRICS.values()), name="all")
    result = {key: summary[name].iloc[0] for key, name in _METRICS.items()}
    result = {key: int(v) if key in ("id_switches", "false_positives", "misses", "matches") else float(v)
              for key, v in result.items()}
    result["num_frames"] = len(frame_indices)
    return result


def load_ground_truth(gt: str | Path | dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Ground-truth tracks of one video from the synthetic generator's JSON (a path or the loaded dict).

    Format: {"frames": [{"frame_index": t, "people": [{"track_id": int, "keypoints": [x, y, v] * K, ...}]}], ...}
    with COCO visibility v in {0, 1, 2}; v = 0 (not labelled) becomes x = y = NaN, score 0.
    Returns:
        frame_index -> (ids (P,) int64, keypoints (P, K, 3) float32 [x, y, v]).
    """
    if not isinstance(gt, dict):
        path = Path(gt)
        if not path.is_file():
            raise FileNotFoundError(f"ground-truth file {str(path)!r} does not exist")
        gt = json.loads(path.read_text())
    if not isinstance(gt.get("frames"), list):
        raise ValueError(f"expected ground truth with a 'frames' list, got keys {sorted(gt)}")
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for frame in gt["frames"]:
        people = frame.get("people", [])
        flat = [p["keypoints"] for p in people]
        if any(len(f) % 3 for f in flat) or len({len(f) for f in flat}) > 1:
            raise ValueError(f"frame {frame['frame_index']}: expected each person's keypoints as [x, y, v] * K "
                             f"of one K, got lengths {[len(f) for f in flat]}")
        k = len(flat[0]) // 3 if flat else _num_keypoints(out)
        keypoints = np.asarray(flat, np.float32).reshape(len(people), k, 3)  # (P, K, 3)
        keypoints[keypoints[..., 2] <= 0] = [np.nan, np.nan, 0.0]
        ids = np.asarray([p["track_id"] for p in people], np.int64)
        out[int(frame["frame_index"])] = (ids, keypoints)
    return out
