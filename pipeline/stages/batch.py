"""The batches that travel between the stages, defined once: column names, dtypes and per-row shapes.

A *frame batch* leaves the decode stage: one row per decoded frame (`image` letterboxed uint8), then one end marker
row per video (`is_end`) that says how many frames it emitted, why it stopped early (`error`), what the video is
(display size, fps, duration) and which listed video it was (`ref`). Between the stages a frame batch travels as one
row (`pack`), so that Ray cannot cut it. A *person batch* leaves the inference stage: one
row per person found, a placeholder row (`person_index` -1) for a frame with nobody in it, and the end markers passed
through; every column of a frame batch but `image` rides along. Person batches stay in Ray's object store until a
worker tracks and writes their videos (`pipeline.stages.write`); the driver reads only their small columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.pose.keypoints import NUM_KEYPOINTS

if TYPE_CHECKING:
    from pipeline.video import Stream

# name -> (dtype, shape of one row); "S" is the square model input size
FRAME_COLUMNS: dict[str, tuple[Any, tuple]] = {
    "video_id": (object, ()),
    "frame_index": (np.int64, ()),       # index in the decoded stream; -1 on an end marker
    "timestamp_s": (np.float64, ()),
    "width": (np.int32, ()),             # the frame's display size (an end marker: the video's; 0 if it never opened)
    "height": (np.int32, ()),
    "image": (np.uint8, ("S", "S", 3)),  # (h, w, 3): letterboxed, or the picture shrunk; zeros on an end marker
    "is_end": (np.bool_, ()),
    "num_frames": (np.int64, ()),        # end marker: frames emitted
    "error": (object, ()),               # end marker: `stage|type|message`, "" when clean
    "fps": (np.float64, ()),             # end marker: the video's frame rate and duration
    "duration_s": (np.float64, ()),
    "ref": (object, ()),                 # end marker: the listed video as JSON (uri, source, size, version...)
}
PASSTHROUGH = tuple(name for name in FRAME_COLUMNS if name != "image")   # what inference hands on unchanged
PERSON_COLUMNS: dict[str, tuple[Any, tuple]] = {
    **{name: FRAME_COLUMNS[name] for name in PASSTHROUGH},
    "person_index": (np.int32, ()),      # order within the frame; -1: a frame where nobody was found
    "person_score": (np.float32, ()),
    "keypoints": (np.float32, (NUM_KEYPOINTS, 3)),  # [x, y, score] in original-frame pixels, NaN where not found
    "ready_at": (np.float64, ()),        # unix time the inference actor had its model loaded (start-up's end)
}


def empty(columns: dict[str, tuple[Any, tuple]], n: int, size: int | tuple[int, int] = 0) -> dict[str, np.ndarray]:
    """`n` rows of `columns`, zero-filled ("" for strings), images of `size` (a square side, or height and width)."""
    out = {}
    for name, (dtype, shape) in columns.items():
        sides = iter((size, size) if isinstance(size, int) else size)
        shape = tuple(next(sides) if dim == "S" else dim for dim in shape)
        out[name] = np.full(n, "", dtype=object) if dtype is object else np.zeros((n, *shape), dtype)
    return out


def frame_batch(video_id: str, indices: np.ndarray, timestamps: np.ndarray, frames: np.ndarray, width: int,
                height: int) -> dict[str, np.ndarray]:
    """A frame batch of one video: frames (n, h, w, 3) uint8 with their indices, timestamps and display size."""
    batch = empty(FRAME_COLUMNS, len(indices), (0, 0))
    batch.update(video_id=np.full(len(indices), video_id, dtype=object), frame_index=indices.astype(np.int64),
                 timestamp_s=timestamps.astype(np.float64), image=frames)
    batch["width"][:], batch["height"][:] = width, height
    return batch


@dataclass(frozen=True)
class VideoHeader:
    """What an end marker tells about the video itself; zeros when it never opened."""
    width: int = 0           # display size, pixels
    height: int = 0
    fps: float = 0.0
    duration_s: float = 0.0  # frames in the stream / fps

    @classmethod
    def of(cls, stream: Stream) -> VideoHeader:
        fps = float(stream.fps or 0.0)
        return cls(stream.letterbox.width, stream.letterbox.height, fps, stream.num_frames / fps if fps > 0 else 0.0)

    @classmethod
    def of_marker(cls, batch: dict[str, np.ndarray], row: int) -> VideoHeader:
        return cls(int(batch["width"][row]), int(batch["height"][row]), float(batch["fps"][row]),
                   float(batch["duration_s"][row]))

    @property
    def opened(self) -> bool:
        return self.fps > 0


def end_marker(video_id: str, size: int | tuple[int, int], num_frames: int, error: str = "",
               header: VideoHeader = VideoHeader(), ref: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The last row of a video's frame batches (its image zeros of `size`, the video's frame shape); `ref` is the
    listed video (`pipeline.stages.read`)."""
    batch = empty(FRAME_COLUMNS, 1, size)
    batch.update(video_id=np.array([video_id], dtype=object), frame_index=np.array([-1], np.int64),
                 is_end=np.ones(1, bool), num_frames=np.array([num_frames], np.int64),
                 error=np.array([error], dtype=object), width=np.array([header.width], np.int32),
                 height=np.array([header.height], np.int32), fps=np.array([header.fps]),
                 duration_s=np.array([header.duration_s]),
                 ref=np.array([json.dumps(ref or {"video_id": video_id}, default=str)], dtype=object))
    return batch


# the columns that vary from frame to frame within a frame batch; the others hold the video's (or the marker's) values
PER_FRAME = ("frame_index", "timestamp_s", "image")


def pack(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A frame batch (one video's frames, or its end marker) as a single row: the per-frame columns as one tensor
    each, the others as their one value.

    Ray Data cuts and joins blocks only between rows, and sizes blocks by bytes: frames as rows were cut wherever
    the bytes fell (32-frame batches of 1024x1024 video arrived as 33-row pieces), which moved the frames where a
    top-down model detects, so the same video did not always give the same rows. One row per batch reaches the
    inference actor whole, at any frame size.
    """
    row = {}
    for name, values in batch.items():
        if name in PER_FRAME:
            row[name] = values[None]
        elif len(values) and not (values == values[0]).all():
            raise ValueError(f"a frame batch holds one video and one kind of row; its {name!r} varies")
        else:
            row[name] = values[:1]
    return row


def unpack(rows: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Packed rows (`pack`) back into their frame batches. Ray hands a tensor column whose rows differ in shape
    (batches of several sizes in one block) as an object array of arrays, one of equal shapes as one array."""
    batches = []
    for i in range(len(rows["is_end"])):
        n = len(rows["frame_index"][i])
        batches.append({name: np.asarray(values[i]) if name in PER_FRAME else np.repeat(values[i:i + 1], n)
                        for name, values in rows.items()})
    return batches


def concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches of the same columns, one after another."""
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}
