"""Assembly: gather the per-person rows of each video as they stream out of Ray, until the video is complete.

Rows of one video arrive in any order and batch; a video is complete when its end marker has arrived and as many
distinct frames as the marker counts. Rows are keyed by (frame, person), so a batch replayed after a worker retry
overwrites instead of duplicating. Completed videos go to tracking in frame order, whole, so chunking and actor
boundaries can never break or renumber a track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.pose.keypoints import NUM_KEYPOINTS
from pipeline.pose.tracking import TrackerConfig, track_video


@dataclass
class Frame:
    timestamp_s: float
    width: int
    height: int
    people: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)  # person_index -> (score, (K, 3))


@dataclass
class VideoRows:
    video_id: str
    frames: dict[int, Frame] = field(default_factory=dict)
    num_frames: int | None = None   # from the end marker
    error: str = ""                 # `stage|type|message` from the end marker, "" when clean
    width: int = 0                  # display size, frame rate and duration from the end marker (0: never opened)
    height: int = 0
    fps: float = 0.0
    duration_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.num_frames is not None and len(self.frames) >= self.num_frames

    def add(self, row: dict) -> None:
        if row["is_end"]:
            self.num_frames, self.error = int(row["num_frames"]), str(row["error"])
            self.width, self.height = int(row["width"]), int(row["height"])
            self.fps, self.duration_s = float(row["fps"]), float(row["duration_s"])
            return
        frame = self.frames.setdefault(int(row["frame_index"]),
                                       Frame(float(row["timestamp_s"]), int(row["width"]), int(row["height"])))
        if row["person_index"] >= 0:
            frame.people[int(row["person_index"])] = (float(row["person_score"]), row["keypoints"])


@dataclass
class TrackedFrame:
    frame_index: int
    timestamp_s: float
    width: int
    height: int
    track_ids: np.ndarray   # (P,) int64
    scores: np.ndarray      # (P,) float32
    keypoints: np.ndarray   # (P, K, 3) [x, y, score], image pixels


class VideoAssembler:
    """Collects streamed rows per video; `add` returns the videos that just became complete.

    A retried Ray task (an actor that died and restarted) replays its batches: rows of a pending video overwrite
    themselves, and rows of a video already returned are dropped, so a video is never returned twice.
    """

    def __init__(self) -> None:
        self.pending: dict[str, VideoRows] = {}
        self.finished: set[str] = set()

    def add(self, batch: dict[str, np.ndarray]) -> list[VideoRows]:
        touched = set()
        for i in range(len(batch["video_id"])):
            video_id = str(batch["video_id"][i])
            if video_id in self.finished:
                continue
            self.pending.setdefault(video_id, VideoRows(video_id)).add({key: batch[key][i] for key in batch})
            touched.add(video_id)
        done = [self.pending.pop(v) for v in sorted(touched) if self.pending[v].complete]
        self.finished.update(video.video_id for video in done)
        return done


def track(video: VideoRows, config: TrackerConfig) -> list[TrackedFrame]:
    """Track a complete video (`track_video`: final ids, the whole video is at hand), frames in order; people within a
    frame in person_index order."""
    inputs, scores = [], []
    for frame_index in sorted(video.frames):
        frame = video.frames[frame_index]
        order = sorted(frame.people)
        keypoints = (np.stack([frame.people[p][1] for p in order]).astype(np.float32) if order
                     else np.zeros((0, NUM_KEYPOINTS, 3), np.float32))
        inputs.append((frame_index, frame.timestamp_s, keypoints))
        scores.append(np.array([frame.people[p][0] for p in order], dtype=np.float32))
    out = []
    for (frame_index, _, _), frame_scores, (ids, keypoints) in zip(inputs, scores, track_video(inputs, config)):
        frame = video.frames[frame_index]
        out.append(TrackedFrame(frame_index, frame.timestamp_s, frame.width, frame.height,
                                np.asarray(ids, np.int64), frame_scores, keypoints))
    return out
