"""Infer stage: the pose model on the actor's device, frame batches in, one row per person out.

Two kinds of model share the stage (`load_pose_model` picks by the checkpoint's metadata): the bottom-up network
(`BottomUpModel`: heatmaps + PAFs of the whole frame, peaks and grouping) and an imported top-down model
(`TopDownModel`: person detector, then a landmark net per person crop, see pipeline/blazepose). Both run entirely on
the device, so only compact per-person rows leave the actor: full heatmaps never travel through Ray's object store.
Keypoints are mapped back to original image pixels here, so every later stage works in image pixels.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import logging
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pipeline.blazepose.topdown import TopDownConfig, TopDownPose
from pipeline.blazepose.weights import CHECKPOINT_KIND, build_modules
from pipeline.checkpoint import (BOTTOM_UP, CheckpointError, load_payload, model_from_payload, payload_metadata,
                                 resolve_checkpoint)
from pipeline.grouping import GroupingConfig, group_people_batch
from pipeline.heatmaps import heatmap_to_input
from pipeline.keypoints import NUM_KEYPOINTS
from pipeline.model import forward_flip_averaged
from pipeline.preprocess import IMAGE_MEAN, IMAGE_STD, Letterbox, normalize

logger = logging.getLogger(__name__)

PASSTHROUGH = ("video_id", "frame_index", "timestamp_s", "width", "height", "is_end", "num_frames", "error", "fps",
               "duration_s")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_AUTOCAST_DTYPES = {"bf16": torch.bfloat16}  # oneDNN runs bf16 convs on AVX512-BF16 / AMX; fp16 has no fast path
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3       # glibc's mallopt parameters (<malloc.h>)


def fold_batchnorm(model: nn.Module, size: int = 64) -> nn.Module:
    """Fold each eval-mode BatchNorm2d into the Conv2d that feeds it: one pass over the activations instead of two.

    Pairs are a Conv2d followed by a BatchNorm2d in a Sequential, and `convN` / `bnN` children of one module
    (PoseNet's BasicBlock). The folded copy is checked against the original on a random (1, 3, size, size) input
    and the original is kept if they differ, so a module that applies bnN to something else stays correct.
    Measured (benchmark, 2-core CPU, B=8, fp32): 9% less CPU per frame; outputs equal to 2e-6 relative.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
        for name, child in list(module.named_children()):
            conv = getattr(module, "conv" + name[2:], None) if name.startswith("bn") else None
            if isinstance(child, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d):
                setattr(module, "conv" + name[2:], fuse_conv_bn_eval(conv, child))
                setattr(module, name, nn.Identity())
    parameter = next(model.parameters())
    x = torch.randn(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
    with torch.inference_mode():
        expected, got = model.eval()(x), folded(x)
    if not all(torch.allclose(e, g, rtol=1e-3, atol=1e-4) for e, g in zip(expected, got)):
        logger.warning("folding BatchNorm into convs changed the model's outputs; running it unfolded")
        return model
    return folded


def prepare_model(model: nn.Module) -> nn.Module:
    """The network as inference runs it: eval mode, BatchNorm folded into the convs, weights channels_last
    (channels_last measured 2.1x faster on a 2-core CPU at batch 16; on GPUs it feeds the tensor cores)."""
    return fold_batchnorm(model.eval()).to(memory_format=torch.channels_last)


def run_network(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None,
                flip_test: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Both heads of `model` for normalised images, as every inference path computes them (the actor, the
    evaluation job, the benchmark): channels_last, under autocast to `dtype` (None: fp32), optionally flip-averaged.

    Args:
        x: (B, 3, S, S) float images on the model's device.
    Returns:
        heatmaps (B, K, S/4, S/4) and PAFs (B, 2L, S/4, S/4), float32.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        heatmaps, pafs = forward_flip_averaged(model, x) if flip_test else model(x)
    return heatmaps.float(), pafs.float()


@functools.cache
def keep_freed_memory(largest_block: int = 32 * 2**20) -> bool:
    """Make glibc keep freed memory in the process for reuse instead of handing it back to the OS.

    A CPU forward allocates and frees activations of several MB per layer. By default glibc unmaps or trims such
    blocks when they are freed, so every batch faults its activations in again: 400-1 800 page faults per frame,
    10-30 % of a forward's time, varying from process to process (2-core Xeon). With blocks up to `largest_block`
    served from the heap and the heap never trimmed, it is 0-35 per frame, and the process holds its peak working set
    (about one batch's activations) from its first batches on instead of refilling it. Measured: raw model +6 %,
    pipeline +4 % frames/s (two A/B rounds of the benchmark). Process-wide and not undone.
    Returns False where the C library has no mallopt (musl, macOS): nothing changes there.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, largest_block) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16 flags in /proc/cpuinfo; False elsewhere).

    Without them oneDNN emulates bf16: a training step of the default net ran 13x slower than fp32 on a 2-core
    AVX2 EPYC, where an AMX Xeon ran it 1.5x faster.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast the network to on `device`, or None for plain fp32.

    `auto` takes bf16 where the hardware runs it natively (a CUDA GPU with bf16, a CPU with AMX/AVX512-BF16) and fp32
    elsewhere. An explicit `bf16` on a CPU without native bf16 is honoured, with a warning: it is much slower.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"expected precision auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return AUTOCAST_DTYPES.get(precision)
    native = cpu_has_native_bf16()
    if precision == "auto":
        return torch.bfloat16 if native else None
    if precision == "bf16" and not native:
        logger.warning("precision bf16 on a CPU without AMX/AVX512-BF16 is emulated and runs several times slower "
                       "than fp32; use precision auto or fp32")
    return CPU_AUTOCAST_DTYPES.get(precision)


def pick_device(device: str) -> torch.device:
    """`auto` -> cuda when this process sees a GPU, else cpu; an explicit `cuda` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda but no GPU is visible to this worker; use model.device=auto or cpu")
    return torch.device(device)


def missing_keypoints(n: int) -> np.ndarray:
    """(n, K, 3) keypoints that were not found: x = y = NaN, score 0."""
    out = np.full((n, NUM_KEYPOINTS, 3), np.nan, np.float32)
    out[..., 2] = 0.0
    return out


PeoplePerFrame = list[tuple[np.ndarray, np.ndarray]]  # keypoints (P, K, 3) in input pixels, person scores (P,)


class BottomUpModel:
    """The bottom-up network (`pipeline.model.PoseNet`): heatmaps and PAFs of whole frames, peaks and grouping on the
    device."""

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
    """An imported top-down model (`pipeline.blazepose`): a person detector and a landmark net on crops."""

    kind = CHECKPOINT_KIND

    def __init__(self, detector: nn.Module, landmarks: nn.Module, device: torch.device, dtype: torch.dtype | None,
                 config: TopDownConfig = TopDownConfig()):
        prepare = lambda m: m.to(device).eval().to(memory_format=torch.channels_last)  # noqa: E731
        self.pose = TopDownPose(prepare(detector), prepare(landmarks), config, dtype)

    def compile(self) -> None:
        """torch.compile both nets; crop batches vary in size, so the batch dimension becomes dynamic after the
        second size seen (two recompiles, then every size runs compiled)."""
        self.pose.detector, self.pose.landmarks = torch.compile(self.pose.detector), torch.compile(self.pose.landmarks)

    def find_people(self, frames: torch.Tensor, content: torch.Tensor,
                    chains: list[list[int]] | None = None) -> PeoplePerFrame:
        """uint8 frames (B, S, S, 3) on the device, the picture's box in each (B, 4) x0, y0, w, h, and the frames of
        each video in order -> people per frame, in input pixels."""
        return [(p.keypoints, p.scores) for p in self.pose.estimate(frames, content, chains)]


def load_pose_model(checkpoint: str, device: torch.device, precision: str = "auto",
                    grouping: GroupingConfig = GroupingConfig(), topdown: TopDownConfig = TopDownConfig(),
                    flip_test: bool = False, storage_options: dict[str, Any] | None = None
                    ) -> tuple[BottomUpModel | TopDownModel, dict]:
    """The model of a checkpoint, ready to run on `device`; returns (model, metadata).

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
        return TopDownModel(detector, landmarks, device, dtype, topdown), metadata
    network = model_from_payload(payload, uri).to(device)
    return BottomUpModel(network, metadata, device, autocast_dtype(precision, device), grouping, flip_test), metadata


def picture_boxes(widths: np.ndarray, heights: np.ndarray, size: int) -> np.ndarray:
    """(B, 4) x0, y0, w, h of each letterboxed picture inside its (size, size) frame, corner coordinates."""
    boxes = [Letterbox.fit(int(w), int(h), size).picture_box for w, h in zip(widths, heights)]
    return np.array(boxes, np.float32).reshape(-1, 4)


def video_chains(video_ids: np.ndarray, frame_indices: np.ndarray) -> list[list[int]]:
    """Row indices of each video's frames, in frame order: the frames a top-down model follows people through."""
    chains: dict[Any, list[int]] = {}
    for row in np.lexsort((frame_indices, video_ids.astype(str))):
        chains.setdefault(video_ids[row], []).append(int(row))
    return list(chains.values())


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


class PoseEstimator:
    """Ray Data UDF holding the model: frame batches in, one row per (frame, person) out; end markers pass."""

    def __init__(self, checkpoint: str, device: str = "auto", precision: str = "fp32",
                 grouping: GroupingConfig = GroupingConfig(), threads: int | None = None,
                 storage_options: dict[str, Any] | None = None, flip_test: bool = False,
                 topdown: TopDownConfig = TopDownConfig(), compile_model: bool = False):
        if threads:
            torch.set_num_threads(threads)  # Ray gives each actor one torch thread unless told otherwise
        self.device = pick_device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.model, meta = load_pose_model(checkpoint, self.device, precision, grouping, topdown, flip_test,
                                           storage_options)
        if compile_model:
            self.model.compile()
        logger.info("%s pose model on %s (%s -> %s%s)", self.model.kind, self.device, precision,
                    str(self.model_dtype).removeprefix("torch."), ", flip test" * flip_test)

    @property
    def model_dtype(self) -> torch.dtype:
        dtype = self.model.dtype if isinstance(self.model, BottomUpModel) else self.model.pose.dtype
        return dtype or torch.float32

    def predict(self, images: np.ndarray, widths: np.ndarray | None = None, heights: np.ndarray | None = None,
                chains: list[list[int]] | None = None) -> PeoplePerFrame:
        """uint8 (B, S, S, 3) letterboxed frames of pictures widths x heights (default: filling the frame) ->
        per frame (keypoints (P, K, 3) in input pixels, scores (P,))."""
        size = images.shape[1]
        frames = torch.from_numpy(images)
        if self.device.type == "cuda":
            frames = frames.pin_memory().to(self.device, non_blocking=True)
        widths = widths if widths is not None else np.full(len(images), size)
        heights = heights if heights is not None else np.full(len(images), size)
        content = torch.from_numpy(picture_boxes(widths, heights, size)).to(self.device)
        return self.model.find_people(frames, content, chains)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        real = np.flatnonzero(~batch["is_end"])
        size = batch["image"].shape[1]
        people = self.predict(batch["image"][real], batch["width"][real], batch["height"][real],
                              video_chains(batch["video_id"][real], batch["frame_index"][real])) if len(real) else []
        sources, person_index, person_score, keypoints = [], [], [], []
        for row, (kp, scores) in zip(real, people):
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
        return out
