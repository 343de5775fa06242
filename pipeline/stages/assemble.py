"""Assembly: gather the per-person rows of each video as they stream out of Ray, until the video is complete.

Rows of one video arrive in any order and block; a video is complete when its end marker has arrived and as many
distinct frames as the marker counts. The work is split between the driver and the workers:

- The driver (`PendingVideos`) reads only the small columns of each block of person rows (video, frame, end
  marker) and keeps, per video, the references of the blocks that hold its rows; the rows stay in Ray's object store.
- A worker (`collect_videos`, then `track`) gathers a complete video's rows from those blocks, keyed by (frame,
  person) so that a batch replayed after a worker retry overwrites instead of duplicating, and tracks the whole
  video in frame order, so chunking and actor boundaries can never break or renumber a track.

Rows stay arrays on their way to Parquet: each block's rows of a video are kept as column slices, joined and
de-duplicated with numpy, tracked, and written from the same arrays (`TrackedVideo`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.pose.keypoints import NUM_KEYPOINTS
from pipeline.pose.tracking import TrackerConfig, track_video
from pipeline.stages.batch import VideoHeader

# the columns of a person row that a video's rows keep (the batch's others describe the stream: ids, end markers)
PERSON_COLUMNS = ("frame_index", "timestamp_s", "width", "height", "person_index", "person_score", "keypoints")
# what the driver reads of each block
INDEX_COLUMNS = ("video_id", "frame_index", "is_end", "num_frames", "ready_at")


@dataclass
class VideoRows:
    """The rows of one video, gathered by a worker from the blocks the driver found complete (`PendingVideos`)."""
    video_id: str
    chunks: list[dict[str, np.ndarray]] = field(default_factory=list)  # PERSON_COLUMNS slices, in arrival order
    num_frames: int | None = None   # from the end marker
    error: str = ""                 # `stage|type|message` from the end marker, "" when clean
    header: VideoHeader = VideoHeader()  # from the end marker
    ref: dict[str, Any] = field(default_factory=dict)  # the listed video, from the end marker

    def add(self, rows: dict[str, np.ndarray]) -> None:
        """Rows of this video from one batch: person rows (person_index -1: a frame where nobody was found) and
        possibly its end marker."""
        end = rows["is_end"].astype(bool)
        if end.any():
            i = int(np.flatnonzero(end)[-1])
            self.num_frames, self.error = int(rows["num_frames"][i]), str(rows["error"][i])
            self.header = VideoHeader.of_marker(rows, i)
            self.ref = json.loads(str(rows["ref"][i]))
        if not end.all():
            people = ~end
            self.chunks.append({key: rows[key][people] for key in PERSON_COLUMNS})

    def rows(self) -> dict[str, np.ndarray]:
        """Every row once, sorted by frame then person; of a row that arrived twice (a replayed batch), the last."""
        if not self.chunks:
            return {"frame_index": np.zeros(0, np.int64), "timestamp_s": np.zeros(0), "width": np.zeros(0, np.int32),
                    "height": np.zeros(0, np.int32), "person_index": np.zeros(0, np.int32),
                    "person_score": np.zeros(0, np.float32), "keypoints": np.zeros((0, NUM_KEYPOINTS, 3), np.float32)}
        columns = {key: np.concatenate([chunk[key] for chunk in self.chunks]) for key in PERSON_COLUMNS}
        arrival = np.arange(len(columns["frame_index"]))
        order = np.lexsort((arrival, columns["person_index"], columns["frame_index"]))
        frame, person = columns["frame_index"][order], columns["person_index"][order]
        last = np.ones(len(order), bool)
        last[:-1] = (frame[1:] != frame[:-1]) | (person[1:] != person[:-1])
        return {key: value[order[last]] for key, value in columns.items()}


@dataclass
class TrackedVideo:
    """A tracked video as arrays: one row per (frame, person), in frame then person order. Frames where nobody was
    found have no row; `num_frames` counts every decoded frame."""
    frame_index: np.ndarray    # (N,) int64
    timestamp_s: np.ndarray    # (N,) float64
    width: np.ndarray          # (N,) int32, original frame size
    height: np.ndarray         # (N,) int32
    person_index: np.ndarray   # (N,) int32, 0, 1, 2... within each frame
    track_id: np.ndarray       # (N,) int64, UNTRACKED (-1) for no one's track
    person_score: np.ndarray   # (N,) float32
    keypoints: np.ndarray      # (N, K, 3) float32 [x, y, score], image pixels
    num_frames: int

    @classmethod
    def from_frames(cls, frames: list[tuple[int, float, int, int, np.ndarray, np.ndarray, np.ndarray]],
                    num_frames: int | None = None) -> "TrackedVideo":
        """From per-frame results (frame_index, timestamp_s, width, height, track_ids (P,), scores (P,),
        keypoints (P, K, 3)), in frame order."""
        counts = [len(ids) for _, _, _, _, ids, _, _ in frames]

        def per_person(i: int, dtype) -> np.ndarray:
            return np.repeat(np.array([frame[i] for frame in frames], dtype), counts)

        def stacked(i: int, dtype, shape: tuple[int, ...] = ()) -> np.ndarray:
            return np.concatenate([np.zeros((0, *shape), dtype)] + [np.asarray(f[i], dtype) for f in frames])

        return cls(per_person(0, np.int64), per_person(1, np.float64), per_person(2, np.int32),
                   per_person(3, np.int32), np.concatenate([np.zeros(0, np.int32)] +
                                                           [np.arange(n, dtype=np.int32) for n in counts]),
                   stacked(4, np.int64), stacked(5, np.float32), stacked(6, np.float32, (NUM_KEYPOINTS, 3)),
                   len(frames) if num_frames is None else num_frames)


@dataclass
class PendingVideo:
    """What the driver knows of a video in flight: the blocks holding its rows, its distinct frames, its length."""
    blocks: list = field(default_factory=list)           # Ray object references of blocks of person rows
    frames: set[int] = field(default_factory=set)
    num_frames: int | None = None                        # from the end marker

    @property
    def complete(self) -> bool:
        return self.num_frames is not None and len(self.frames) >= self.num_frames


class PendingVideos:
    """The driver's index of the person rows streaming out of Ray: `add` takes each block's reference and small
    columns and returns the videos that just became complete, as (video_id, block references).

    A retried Ray task replays its blocks: their frames are counted once, and blocks of a video already returned
    are ignored, so a video is never returned twice (its writer keys rows by frame and person).
    """

    def __init__(self) -> None:
        self.pending: dict[str, PendingVideo] = {}
        self.finished: set[str] = set()
        self.ready_at: float | None = None   # when the first inference actor had its model loaded

    def add(self, block_ref: Any, index: pa.Table) -> tuple[int, list[tuple[str, list]]]:
        """One block: its reference and its INDEX_COLUMNS. Returns (new distinct frames, complete videos)."""
        if index.num_rows == 0:
            return 0, []
        if self.ready_at is None:
            self.ready_at = float(pc.min(index["ready_at"]).as_py())
        encoded = index["video_id"].combine_chunks().dictionary_encode()
        codes, names = encoded.indices.to_numpy(), encoded.dictionary.to_pylist()
        frame_index = index["frame_index"].to_numpy()
        is_end = index["is_end"].to_numpy()
        num_frames = index["num_frames"].to_numpy()
        new_frames, done = 0, []
        for code, video_id in enumerate(names):
            if video_id in self.finished:
                continue
            mine = codes == code if len(names) > 1 else np.ones(len(codes), bool)
            video = self.pending.setdefault(video_id, PendingVideo())
            video.blocks.append(block_ref)
            ends = np.flatnonzero(mine & is_end)
            if len(ends):
                video.num_frames = int(num_frames[ends[-1]])
            before = len(video.frames)
            video.frames.update(frame_index[mine & ~is_end].tolist())
            new_frames += len(video.frames) - before
            if video.complete:
                done.append((video_id, self.pending.pop(video_id).blocks))
                self.finished.add(video_id)
        return new_frames, done

    def take_incomplete(self) -> list[tuple[str, list]]:
        """The videos still pending (a stage lost some of their rows): every block that arrived, to write what came."""
        left = [(video_id, video.blocks) for video_id, video in self.pending.items()]
        self.finished.update(self.pending)
        self.pending.clear()
        return left


def collect_videos(blocks: Iterable[Any], video_ids: Iterable[str]) -> dict[str, VideoRows]:
    """The rows of `video_ids` from blocks of person rows (Arrow tables or any Ray Data block), in a worker."""
    from ray.data.block import BlockAccessor

    wanted = set(video_ids)
    videos = {video_id: VideoRows(video_id) for video_id in wanted}
    for block in blocks:
        rows = BlockAccessor.for_block(block).to_batch_format("numpy")
        ids = rows["video_id"].astype(str)
        for video_id in wanted.intersection(np.unique(ids).tolist()):
            mine = ids == video_id
            videos[video_id].add({key: value[mine] for key, value in rows.items()})
    return videos


def track(video: VideoRows, config: TrackerConfig) -> TrackedVideo:
    """Track a complete video (`track_video`: final ids, the whole video is at hand), frames in order; people within a
    frame in person_index order."""
    rows = video.rows()
    frames, starts = np.unique(rows["frame_index"], return_index=True)     # every frame has a row, if a placeholder
    ends = np.append(starts[1:], len(rows["frame_index"]))
    found = rows["person_index"] >= 0                                        # placeholders: -1
    inputs = [(int(frame), float(rows["timestamp_s"][a]), rows["keypoints"][a:b][found[a:b]].astype(np.float32))
              for frame, a, b in zip(frames, starts, ends)]
    scores = [rows["person_score"][a:b][found[a:b]] for a, b in zip(starts, ends)]   # the model's, as written
    results = track_video(inputs, config, scores)
    people = {key: value[found] for key, value in rows.items()}
    return TrackedVideo(people["frame_index"].astype(np.int64), people["timestamp_s"].astype(np.float64),
                        people["width"].astype(np.int32), people["height"].astype(np.int32),
                        np.concatenate([np.zeros(0, np.int32)] + [np.arange(len(ids), dtype=np.int32)
                                                                  for ids, _ in results]),
                        np.concatenate([np.zeros(0, np.int64)] + [ids for ids, _ in results]).astype(np.int64),
                        people["person_score"].astype(np.float32),
                        np.concatenate([np.zeros((0, NUM_KEYPOINTS, 3), np.float32)]
                                       + [kp for _, kp in results]).astype(np.float32),
                        len(frames))
