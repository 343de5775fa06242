"""A pose model as the pipeline runs it: frames in, people out (keypoints in frame pixels, scores in 0..1), whether the
checkpoint holds the bottom-up network or the top-down detector and landmark nets; `load_pose_model` builds
either from a checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.models.blazepose.detector import INPUT_SIZE as DETECTOR_INPUT_SIZE
from pipeline.models.blazepose.landmarks import INPUT_SIZE as CROP_SIZE
from pipeline.models.blazepose.topdown import TopDownConfig, TopDownPose
from pipeline.models.blazepose.weights import CHECKPOINT_KIND, build_modules, cache_dir
from pipeline.models.checkpoint import (
    BOTTOM_UP,
    CheckpointError,
    load_payload,
    model_from_payload,
    payload_metadata,
    resolve_checkpoint,
)
from pipeline.models.onnx_net import OnnxNet
from pipeline.models.runtime import autocast_dtype, compile_padded, pick_runtime, prepare_model, run_network
from pipeline.pose.grouping import GroupingConfig, group_people_batch
from pipeline.pose.heatmaps import heatmap_to_input
from pipeline.pose.keypoints import NUM_KEYPOINTS
from pipeline.pose.letterbox import IMAGE_MEAN, IMAGE_STD, Letterbox, normalize

PeoplePerFrame = list[tuple[np.ndarray, np.ndarray]]  # keypoints (P, K, 3) in input pixels, person scores (P,)



def missing_keypoints(n: int) -> np.ndarray:
    """(n, K, 3) keypoints that were not found: x = y = NaN, score 0."""
    out = np.full((n, NUM_KEYPOINTS, 3), np.nan, np.float32)
    out[..., 2] = 0.0
    return out


class BottomUpModel:
    """The bottom-up network (`pipeline.models.bottomup.PoseNet`): heatmaps and PAFs of whole frames, peaks and
    grouping on the device."""

    kind = BOTTOM_UP

    def __init__(self, network: nn.Module, metadata: dict, device: torch.device, dtype: torch.dtype | None,
                 grouping: GroupingConfig = GroupingConfig(), flip_test: bool = False):
        self.network = prepare_model(network)
        self.device, self.dtype, self.grouping, self.flip_test = device, dtype, grouping, flip_test
        self.mean, self.std = tuple(metadata.get("mean", IMAGE_MEAN)), tuple(metadata.get("std", IMAGE_STD))
        self.stride = int(getattr(network, "stride", 4))

    def compile(self) -> None:
        self.network = torch.compile(self.network)

    def find_people(self, frames: torch.Tensor, content: torch.Tensor | None = None,
                    chains: list[list[int]] | None = None) -> PeoplePerFrame:
        """uint8 frames (B, S, S, 3) on the device -> people per frame, in input pixels."""
        x = normalize(frames, self.mean, self.std)                                  # (B, 3, S, S)
        heatmaps, pafs = run_network(self.network, x, self.dtype, self.flip_test)   # (B, K, h, w), (B, 2L, h, w)
        people = []
        for keypoints, scores in group_people_batch(heatmaps, pafs, self.grouping):
            xy = heatmap_to_input(keypoints[..., :2].astype(np.float64), self.stride)
            confidence = np.clip(keypoints[..., 2:3], 0.0, 1.0)  # heatmap peaks overshoot 1 a little (up to ~1.15)
            people.append((np.concatenate([xy, confidence], axis=-1).astype(np.float32), scores))
        return people


class TopDownModel:
    """An imported top-down model (`pipeline.models.blazepose`): a person detector and a landmark net on crops."""

    kind = CHECKPOINT_KIND

    def __init__(self, detector: nn.Module, landmarks: nn.Module, device: torch.device, dtype: torch.dtype | None,
                 config: TopDownConfig = TopDownConfig(), runtime: str = "torch"):
        if runtime == "onnxruntime":
            threads, cache = torch.get_num_threads(), cache_dir() / "onnx"
            detector = OnnxNet(detector, (3, DETECTOR_INPUT_SIZE, DETECTOR_INPUT_SIZE), threads, cache)
            landmarks = OnnxNet(landmarks, (3, CROP_SIZE, CROP_SIZE), threads, cache)
        else:
            prepare = lambda m: m.to(device).eval().to(memory_format=torch.channels_last)  # noqa: E731
            detector, landmarks = prepare(detector), prepare(landmarks)
        self.runtime = runtime
        self.pose = TopDownPose(detector, landmarks, config, dtype, device)

    def compile(self) -> None:
        """torch.compile both nets, one graph each: views and crop batches vary in size, so both run on batches
        padded to a multiple of 16 with a dynamic batch dimension (`runtime.PaddedBatch`)."""
        if self.runtime != "torch":
            raise ValueError("model.compile needs model.runtime torch (or auto)")
        pose = self.pose
        pose.detector, pose.landmarks = compile_padded(pose.detector), compile_padded(pose.landmarks)

    def find_people(self, frames: torch.Tensor, content: torch.Tensor | np.ndarray,
                    chains: list[list[int]] | None = None) -> PeoplePerFrame:
        """uint8 frames (B, S, S, 3) on the device, the picture's box in each (B, 4) x0, y0, w, h, and the frames of
        each video in order -> people per frame, in input pixels."""
        if isinstance(content, np.ndarray):
            content = self.pose.to_device(content)
        return [(p.keypoints, p.scores) for p in self.pose.estimate(frames, content, chains)]


def load_pose_model(checkpoint: str, device: torch.device, precision: str = "auto",
                    grouping: GroupingConfig = GroupingConfig(), topdown: TopDownConfig = TopDownConfig(),
                    flip_test: bool = False, storage_options: dict[str, Any] | None = None,
                    runtime: str = "auto", compile_model: bool = False) -> tuple[BottomUpModel | TopDownModel, dict]:
    """The model of a checkpoint, ready to run on `device`; returns (model, metadata).

    A top-down model's nets run on `runtime` (`runtime.pick_runtime`; `compile_model` means torch); the bottom-up
    net always runs in torch.

    Raises:
        FileNotFoundError, CheckpointError: no usable checkpoint at `checkpoint`.
        ValueError: an option the model does not support (the flip test of a top-down model).
    """
    uri = resolve_checkpoint(checkpoint)
    payload = load_payload(uri, "cpu", storage_options)
    metadata = payload_metadata(payload, uri)
    if metadata.get("kind", BOTTOM_UP) == TopDownModel.kind:
        # auto stays fp32 here: bf16 cost the imported nets 0.01-0.04 OKS AP on real photos (docs/real-people.md)
        dtype = None if precision == "auto" else autocast_dtype(precision, device)
        if flip_test:
            raise ValueError("model.flip_test applies to the bottom-up model only; the top-down model has no flip test")
        try:
            detector, landmarks = build_modules(payload, uri)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{uri}: weights do not fit the top-down model its metadata describes: {exc}; "
                                  f"import it again with `posepipe models fetch --force`") from exc
        return TopDownModel(detector, landmarks, device, dtype, topdown,
                            pick_runtime(runtime, device, dtype, compile_model)), metadata
    network = model_from_payload(payload, uri).to(device)
    return BottomUpModel(network, metadata, device, autocast_dtype(precision, device), grouping, flip_test), metadata


def picture_boxes(widths: np.ndarray, heights: np.ndarray, size: int) -> np.ndarray:
    """(B, 4) x0, y0, w, h of each letterboxed picture inside its (size, size) frame, corner coordinates."""
    boxes = [Letterbox.fit(int(w), int(h), size).picture_box for w, h in zip(widths, heights)]
    return np.array(boxes, np.float32).reshape(-1, 4)
