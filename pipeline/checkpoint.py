"""Model checkpoints: one file holding the weights and everything inference needs to rebuild and feed the model.

A checkpoint is `torch.save({"state_dict": ..., "metadata": ...})` at any fsspec URI (local path, file://, s3://,
memory://). Writes are atomic (see `pipeline.storage.write_bytes_atomic`) so a reader never loads half a file, and
loads use `weights_only=True`, so a checkpoint cannot run code. The metadata is plain JSON-like data:

    model           ModelConfig.to_dict(), enough to rebuild PoseNet
    keypoint_names  COCO-17 order the heads were trained in
    skeleton        0-based limbs, in the order of the PAF channels
    input_size      square model input, pixels
    mean, std       normalisation of 0..1 RGB input
    heads           ["heatmaps", "pafs"]
    train_config    the TrainConfig that produced it (JSON dump)
    metrics         validation metrics at that epoch
    epoch           1-based epoch the weights are from
    created_at      ISO-8601 UTC time of writing
    weights_dtype   float32, or float16 for a file saved with half=True (loaded back as float32)

Optimizer state for resuming lives in a separate file (`save_training_state`), so the exported model stays small.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import pickle
from typing import Any

import torch

from pipeline.keypoints import KEYPOINT_NAMES, SKELETON
from pipeline.model import ModelConfig, PoseNet
from pipeline.preprocess import IMAGE_MEAN, IMAGE_STD
from pipeline.storage import resolve, write_bytes_atomic

logger = logging.getLogger(__name__)

REQUIRED_METADATA = ("model", "keypoint_names", "skeleton", "input_size", "mean", "std", "heads")


class CheckpointError(RuntimeError):
    """A checkpoint file that exists but cannot be used (truncated, not a checkpoint, wrong model)."""


def checkpoint_metadata(config: ModelConfig, train_config: dict | None = None, metrics: dict | None = None,
                        epoch: int = 0) -> dict[str, Any]:
    """The metadata dict described in the module docstring, for a model built from `config`."""
    return {
        "model": config.to_dict(),
        "keypoint_names": list(KEYPOINT_NAMES),
        "skeleton": [list(limb) for limb in SKELETON],
        "input_size": int(config.input_size),
        "mean": list(IMAGE_MEAN),
        "std": list(IMAGE_STD),
        "heads": ["heatmaps", "pafs"],
        "train_config": train_config or {},
        "metrics": metrics or {},
        "epoch": int(epoch),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under a DistributedDataParallel (or similar `.module`) wrapper."""
    return getattr(model, "module", model)


def save_checkpoint(model: PoseNet, uri: str, metadata: dict, storage_options: dict | None = None,
                    half: bool = False) -> None:
    """Write weights + metadata to `uri` atomically; `half` stores floating weights as fp16 (half the file; they load
    back into fp32, the outputs moving by about 1e-3 of their range). metadata["weights_dtype"] records which.

    Raises:
        ValueError: when `metadata` lacks a required key or is not JSON-like (it must load with weights_only=True).
    """
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}; build it with checkpoint_metadata(...)")
    try:
        plain = json.loads(json.dumps(metadata))  # tuples -> lists, numpy scalars rejected early
    except TypeError as exc:
        raise ValueError(f"checkpoint metadata must be JSON-like (str, int, float, list, dict): {exc}") from exc
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    plain["weights_dtype"] = "float16" if half else "float32"
    save_payload({"state_dict": state, "metadata": plain}, uri, storage_options)
    logger.info("saved checkpoint %s (epoch %s)", uri, plain.get("epoch"))


def load_checkpoint(uri: str, map_location: Any = "cpu",
                    storage_options: dict | None = None) -> tuple[PoseNet, dict]:
    """Rebuild the model saved at `uri`; returns (model in eval mode, metadata).

    Raises:
        FileNotFoundError: nothing at `uri`.
        CheckpointError: the file is not a readable posepipe checkpoint.
    """
    payload = load_payload(uri, map_location, storage_options)
    if not isinstance(payload, dict) or "state_dict" not in payload or "metadata" not in payload:
        raise CheckpointError(f"{uri} is not a posepipe checkpoint: expected a dict with 'state_dict' and "
                              f"'metadata', got {type(payload).__name__}; save it with save_checkpoint")
    metadata = payload["metadata"]
    try:
        model = PoseNet(ModelConfig.from_dict(metadata["model"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{uri}: weights do not fit the model described by its metadata: {exc}") from exc
    return model.to(map_location).eval(), metadata


def save_training_state(state: dict, uri: str, storage_options: dict | None = None) -> None:
    """Optimizer/scheduler state and progress for resuming; tensors and plain data only."""
    save_payload(state, uri, storage_options)


def load_training_state(uri: str, storage_options: dict | None = None) -> dict | None:
    """The state written by `save_training_state`, or None when there is none yet."""
    fs, path = resolve(uri, storage_options)
    if not fs.exists(path):
        return None
    return load_payload(uri, "cpu", storage_options)


def save_payload(payload: dict, uri: str, storage_options: dict | None) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    fs, path = resolve(uri, storage_options)
    write_bytes_atomic(fs, path, buffer.getvalue())


def load_payload(uri: str, map_location: Any, storage_options: dict | None) -> Any:
    fs, path = resolve(uri, storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {uri}; check the path, or train one with "
                                f"`python -m jobs.train`") from None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as exc:
        raise CheckpointError(f"{uri} ({len(data)} bytes) is not a readable torch checkpoint "
                              f"(truncated or corrupt?): {exc}") from exc
