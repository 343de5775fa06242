"""Infer stage: the pose model on the actor's device, frame batches in, one row per person out.

Two kinds of model share the stage (`load_pose_model` picks by the checkpoint's metadata): the bottom-up network
(`BottomUpModel`: heatmaps + PAFs of the whole frame, peaks and grouping) and an imported top-down model
(`TopDownModel`: person detector, then a landmark net per person crop, see pipeline/models/blazepose). Both run
entirely on the device, so only compact per-person rows leave the actor: full heatmaps never travel through Ray's
object store.
Keypoints are mapped back to original image pixels here, so every later stage works in image pixels.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import torch

from pipeline.models.blazepose.topdown import TopDownConfig
from pipeline.models.pose_model import (
    BottomUpModel,
    PeoplePerFrame,
    load_pose_model,
    missing_keypoints,
    picture_boxes,
)
from pipeline.models.runtime import inference_device, to_device
from pipeline.pose.grouping import GroupingConfig
from pipeline.pose.letterbox import Letterbox, letterbox_frames
from pipeline.stages.batch import PASSTHROUGH, PERSON_COLUMNS, concat, empty, unpack

logger = logging.getLogger(__name__)


def people_rows(columns: dict[str, np.ndarray], frame: int, keypoints: np.ndarray, scores: np.ndarray,
                size: int) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Map one frame's people from model-input pixels to original-image pixels.

    Returns the source row index per output row, person_index (R,), person_score (R,), keypoints (R, K, 3); a frame
    without people gives one row with person_index -1, so downstream stages still see the frame.
    """
    if len(keypoints) == 0:
        return [frame], np.array([-1], np.int32), np.zeros(1, np.float32), missing_keypoints(1)
    letterbox = Letterbox.fit(int(columns["width"][frame]), int(columns["height"][frame]), size)
    xy = letterbox.to_image(keypoints[..., :2].astype(np.float64))                         # (P, K, 2)
    out = np.concatenate([xy, keypoints[..., 2:3]], axis=-1).astype(np.float32)            # (P, K, 3)
    return [frame] * len(keypoints), np.arange(len(keypoints), dtype=np.int32), scores.astype(np.float32), out


def host_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames as a tensor without a copy. Ray hands them as a read-only view of its object store, which
    torch warns about; the model only reads them (letterboxing and normalising write new tensors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(frames)


class PoseEstimator:
    """Ray Data UDF holding the model: frame batches in, one row per (frame, person) out; end markers pass."""

    def __init__(self, checkpoint: str, device: str = "auto", precision: str = "fp32",
                 grouping: GroupingConfig = GroupingConfig(), threads: int | None = None,
                 storage_options: dict[str, Any] | None = None, flip_test: bool = False,
                 topdown: TopDownConfig = TopDownConfig(), compile_model: bool = False, runtime: str = "auto",
                 frame_size: int | None = None, batch_size: int | None = None):
        """`frame_size`: None when frames arrive letterboxed into the model's square; else they arrive at their own
        aspect, shrunk to fit it (the top-down model's decode), and are letterboxed here on the device.
        `batch_size`: frames per forward pass of a bottom-up net (`model.batch_size`; None: a decoded batch at once);
        a top-down model takes each decoded batch whole, since it follows people from frame to frame within it."""
        self.frame_size = frame_size
        self.batch_size = None if frame_size else batch_size
        if threads:
            torch.set_num_threads(threads)  # Ray gives each actor one torch thread unless told otherwise
        self.device = inference_device(device)
        self.model, meta = load_pose_model(checkpoint, self.device, precision, grouping, topdown, flip_test,
                                           storage_options, runtime, compile_model)
        if compile_model:
            self.model.compile()
        self.ready_at = time.time()   # start-up ends here: Ray, the actor and its model are ready
        logger.info("%s pose model on %s (%s -> %s%s)", self.model.kind, self.device, precision,
                    str(self.model_dtype).removeprefix("torch."), ", flip test" * flip_test)

    @property
    def model_dtype(self) -> torch.dtype:
        dtype = self.model.dtype if isinstance(self.model, BottomUpModel) else self.model.pose.dtype
        return dtype or torch.float32

    def predict(self, images: np.ndarray | torch.Tensor, widths: np.ndarray | None = None,
                heights: np.ndarray | None = None, chains: list[list[int]] | None = None) -> PeoplePerFrame:
        """uint8 (B, S, S, 3) letterboxed frames (host arrays, or tensors on the device) of pictures widths x
        heights (default: filling the frame) -> per frame (keypoints (P, K, 3) in input pixels, scores (P,))."""
        size = images.shape[1]
        frames = to_device(host_tensor(images) if isinstance(images, np.ndarray) else images, self.device)
        widths = widths if widths is not None else np.full(len(images), size)
        heights = heights if heights is not None else np.full(len(images), size)
        content = picture_boxes(widths, heights, size)
        return self.model.find_people(frames, content, chains)

    def letterboxed(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """A frame batch's frames (one video) on the device, letterboxed into the model's square."""
        letterbox = Letterbox.fit(int(batch["width"][0]), int(batch["height"][0]), self.frame_size)
        return letterbox_frames(to_device(host_tensor(batch["image"]), self.device), letterbox)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Packed frame batches (`pipeline.stages.batch.pack`) in, person rows out. Ray may hand several batches in
        one call; they run one at a time, so the actor's memory follows `decode.batch_size`."""
        return concat([self.people(batch) for batch in unpack(rows)]) if len(rows["is_end"]) \
            else empty(PERSON_COLUMNS, 0)

    def people(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One frame batch's person rows; an end marker passes through unchanged as one placeholder row."""
        found: list[tuple[np.ndarray, np.ndarray]] = []
        if not batch["is_end"][0]:
            frames = batch["image"] if self.frame_size is None else self.letterboxed(batch)
            step = self.batch_size or len(frames)
            for start in range(0, len(frames), step):
                rows = slice(start, start + step)
                chunk = frames[rows]                            # one video's frames in order: one chain
                found += self.predict(chunk, batch["width"][rows], batch["height"][rows], [list(range(len(chunk)))])
        else:
            found = [(missing_keypoints(0), np.zeros(0, np.float32))]
        size = self.frame_size or batch["image"].shape[1]
        parts = [people_rows(batch, row, keypoints, scores, size) for row, (keypoints, scores) in enumerate(found)]
        out = {key: batch[key][[source for part in parts for source in part[0]]] for key in PASSTHROUGH}
        out["person_index"] = np.concatenate([part[1] for part in parts])
        out["person_score"] = np.concatenate([part[2] for part in parts])
        out["keypoints"] = np.concatenate([part[3] for part in parts])
        out["ready_at"] = np.full(len(out["person_index"]), self.ready_at)
        return out
