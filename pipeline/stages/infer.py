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
    video_chains,
)
from pipeline.models.runtime import inference_device, to_device
from pipeline.pose.grouping import GroupingConfig
from pipeline.pose.keypoints import NUM_KEYPOINTS
from pipeline.pose.letterbox import Letterbox, letterbox_frames
from pipeline.stages.batch import PASSTHROUGH

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


def decoded_batches(video_ids: np.ndarray, rows: np.ndarray, size: int | None) -> list[np.ndarray]:
    """`rows` (frames, in order) cut into the decoded batches they came in: runs of one video, each cut every `size`
    frames (None: not cut).

    Ray hands the actor blocks, and bundles of them, that hold whole decoded batches: consecutive frames of one video,
    `size` of them but for a video's last. A run of one video's rows therefore starts on a decoded batch, and cutting
    it every `size` frames gives the batches back, wherever Ray cut and joined blocks.
    """
    ids = video_ids[rows]
    starts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    pieces = []
    for run in np.split(rows, starts) if len(rows) else []:
        pieces += np.split(run, range(size, len(run), size)) if size else [run]
    return pieces


class PoseEstimator:
    """Ray Data UDF holding the model: frame batches in, one row per (frame, person) out; end markers pass."""

    def __init__(self, checkpoint: str, device: str = "auto", precision: str = "fp32",
                 grouping: GroupingConfig = GroupingConfig(), threads: int | None = None,
                 storage_options: dict[str, Any] | None = None, flip_test: bool = False,
                 topdown: TopDownConfig = TopDownConfig(), compile_model: bool = False, runtime: str = "auto",
                 frame_size: int | None = None, decoded_batch: int | None = None):
        """`frame_size`: None when frames arrive letterboxed into the model's square; else they arrive at their own
        aspect, shrunk to fit it (the top-down model's decode), and are letterboxed here on the device, one decoded
        batch of `decoded_batch` frames (`decode.batch_size`) at a time: the actor's memory follows that setting,
        not how many batches Ray bundles into one call."""
        self.frame_size, self.decoded_batch = frame_size, decoded_batch
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
        frames = to_device(torch.from_numpy(images) if isinstance(images, np.ndarray) else images, self.device)
        widths = widths if widths is not None else np.full(len(images), size)
        heights = heights if heights is not None else np.full(len(images), size)
        content = picture_boxes(widths, heights, size)
        return self.model.find_people(frames, content, chains)

    def letterboxed(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> torch.Tensor:
        """The frames of `rows` (one video) on the device, letterboxed into the model's square. Ray hands frames of
        one shape as one array, and frames of several shapes (videos of several sizes in one block) as an object
        array of arrays."""
        images = batch["image"][rows]
        images = np.stack(list(images)) if images.dtype == object else images
        letterbox = Letterbox.fit(int(batch["width"][rows[0]]), int(batch["height"][rows[0]]), self.frame_size)
        return letterbox_frames(to_device(torch.from_numpy(images), self.device), letterbox)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        real = np.flatnonzero(~batch["is_end"])
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        groups = decoded_batches(batch["video_id"], real, self.decoded_batch) if self.frame_size \
            else ([real] if len(real) else [])
        for rows in groups:
            frames = batch["image"][rows] if self.frame_size is None else self.letterboxed(batch, rows)
            people = self.predict(frames, batch["width"][rows], batch["height"][rows],
                                  video_chains(batch["video_id"][rows], batch["frame_index"][rows]))
            found.update(zip(rows.tolist(), people))
        size = self.frame_size or batch["image"].shape[1]
        sources, person_index, person_score, keypoints = [], [], [], []
        for row in real:
            kp, scores = found[int(row)]
            src, idx, sc, xy = people_rows(batch, row, kp, scores, size)
            sources += src
            person_index.append(idx)
            person_score.append(sc)
            keypoints.append(xy)
        for row in np.flatnonzero(batch["is_end"]):  # end markers pass through unchanged
            sources.append(row)
            person_index.append(np.array([-1], np.int32))
            person_score.append(np.zeros(1, np.float32))
            keypoints.append(missing_keypoints(1))
        out = {key: batch[key][sources] for key in PASSTHROUGH}
        out["person_index"] = np.concatenate(person_index) if person_index else np.zeros(0, np.int32)
        out["person_score"] = np.concatenate(person_score) if person_score else np.zeros(0, np.float32)
        out["keypoints"] = np.concatenate(keypoints) if keypoints else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
        out["ready_at"] = np.full(len(sources), self.ready_at)
        return out
