"""Model checkpoints: one file holding the weights and everything inference needs to rebuild and feed the model.

A checkpoint is `torch.save({"state_dict": ..., "metadata": ...})` at any fsspec URI (local path, file://, s3://,
memory://), plus "weight_scales" when its large conv weights are stored as int8. Writes are atomic (see
`pipeline.storage.write_bytes_atomic`) so a reader never loads half a file, and loads use `weights_only=True`, so a
checkpoint cannot run code. The metadata is plain JSON-like data:

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
    weights_dtype   how the file stores the weights: float32, float16 or int8 (`WEIGHT_DTYPES`); all load as float32
    kind            "bottomup" (absent in older files); imported top-down models ("topdown") keep their own layout,
                    see pipeline/models/blazepose/weights.py

Optimizer state for resuming lives in a separate file (`save_training_state`), so the exported model stays small.
"""

from __future__ import annotations

import collections
import datetime as dt
import io
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from pipeline.models.bottomup import ModelConfig, PoseNet
from pipeline.pose.keypoints import KEYPOINT_NAMES, SKELETON
from pipeline.pose.letterbox import IMAGE_MEAN, IMAGE_STD
from pipeline.storage import resolve, write_bytes_atomic

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[2]
BOTTOM_UP = "bottomup"  # metadata "kind" of PoseNet checkpoints (the default when absent); see blazepose.weights
REQUIRED_METADATA = ("model", "keypoint_names", "skeleton", "input_size", "mean", "std", "heads")
WeightsDtype = Literal["float32", "float16", "int8"]  # storage of a checkpoint's weights (`save_checkpoint`)
WEIGHT_DTYPES = get_args(WeightsDtype)


class CheckpointError(RuntimeError):
    """A checkpoint file that exists but cannot be used (truncated, not a checkpoint, wrong model)."""


def checkpoint_metadata(config: ModelConfig, train_config: dict | None = None, metrics: dict | None = None,
                        epoch: int = 0) -> dict[str, Any]:
    """The metadata dict described in the module docstring, for a model built from `config`."""
    return {
        "kind": BOTTOM_UP,
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
                    weights: WeightsDtype = "float32") -> None:
    """Write weights + metadata to `uri` atomically; metadata["weights_dtype"] records how the weights are stored.

    `weights` is one of `WEIGHT_DTYPES`: float32 as trained; float16 for half the file (outputs move by about 1e-3 of
    their range); int8 for about a quarter (`quantize_state`), which lets a net nearly twice the size ship under the
    same file limit. Every kind loads back as a float32 model.

    Raises:
        ValueError: when `weights` is unknown, or `metadata` lacks a required key or is not JSON-like (it must load
            with weights_only=True).
    """
    if weights not in WEIGHT_DTYPES:
        raise ValueError(f"expected weights one of {WEIGHT_DTYPES}, got {weights!r}")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}; build it with checkpoint_metadata(...)")
    try:
        plain = json.loads(json.dumps(metadata))  # tuples -> lists, numpy scalars rejected early
    except TypeError as exc:
        raise ValueError(f"checkpoint metadata must be JSON-like (str, int, float, list, dict): {exc}") from exc
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    payload: dict[str, Any] = {"metadata": {**plain, "weights_dtype": weights}}
    if weights == "int8":
        state, payload["weight_scales"] = quantize_state(state)
    if weights != "float32":  # what int8 leaves in floating point (BatchNorm, biases) goes to fp16 too
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_payload({"state_dict": state, **payload}, uri, storage_options)
    logger.info("saved checkpoint %s (epoch %s, %s weights)", uri, plain.get("epoch"), weights)


def quantize_state(state: dict[str, torch.Tensor],
                   min_elements: int = 2**14) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Large conv weights -> int8 with one fp32 scale per output channel; the rest as is. Returns (state, scales).

    Symmetric round-to-nearest, scale = max |w| / 127 per output channel, so each weight moves by at most half a
    step (0.4 % of its channel's largest weight). Only floating tensors of 2+ dims with `min_elements` or more are
    quantized: in PoseNet those are the low-resolution stages, with >95 % of the parameters. The small
    high-resolution layers (stem, stride-4 stage, heads), whose errors reach every output pixel, stay floating, as do
    BatchNorm statistics and biases: that keeps the outputs about as near fp32 as bf16 inference comes, where
    quantizing every conv moved them three times as far (docs/performance.md).
    """
    quantized, scales = dict(state), {}
    for key, tensor in state.items():
        if tensor.is_floating_point() and tensor.ndim >= 2 and tensor.numel() >= min_elements:
            flat = tensor.float().flatten(1)                                  # (C_out, rest)
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127             # (C_out,)
            quantized[key] = torch.round(flat / scale[:, None]).to(torch.int8).view(tensor.shape)
            scales[key] = scale
    return quantized, scales


def dequantize_state(state: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `quantize_state`: float32 tensors, each int8 one times its per-channel scale."""
    restored = dict(state)
    for key, scale in scales.items():
        q = state[key]
        restored[key] = (q.float().flatten(1) * scale.float()[:, None]).view(q.shape)
    return restored


def load_checkpoint(uri: str, map_location: Any = "cpu",
                    storage_options: dict | None = None) -> tuple[PoseNet, dict]:
    """Rebuild the model saved at `uri`; returns (model in eval mode, metadata).

    Raises:
        FileNotFoundError: nothing at `uri`.
        CheckpointError: the file is not a readable posepipe checkpoint.
    """
    payload = load_payload(uri, map_location, storage_options)
    return model_from_payload(payload, uri).to(map_location).eval(), payload["metadata"]


def model_from_payload(payload: Any, uri: str) -> PoseNet:
    """The bottom-up network of a loaded checkpoint payload (float32, eval mode).

    Raises:
        CheckpointError: not a bottom-up posepipe checkpoint, or weights that do not fit its metadata.
    """
    metadata = payload_metadata(payload, uri)
    if metadata.get("kind", BOTTOM_UP) != BOTTOM_UP:
        raise CheckpointError(f"{uri} holds a {metadata['kind']} model ({metadata.get('family')}), not the bottom-up "
                              f"network that training uses; point at a bottom-up checkpoint such as "
                              f"models/posepipe-synthetic.pt")
    if "state_dict" not in payload:
        raise CheckpointError(f"{uri} is not a posepipe checkpoint: it has no 'state_dict'; save it with "
                              f"save_checkpoint")
    try:
        model = PoseNet(ModelConfig.from_dict(metadata["model"]))
        model.load_state_dict(dequantize_state(payload["state_dict"], payload.get("weight_scales", {})))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{uri}: weights do not fit the model described by its metadata: {exc}") from exc
    return model.eval()


def payload_metadata(payload: Any, uri: str) -> dict:
    """The metadata of a loaded checkpoint payload. Raises CheckpointError when it is not a posepipe checkpoint."""
    if not isinstance(payload, dict) or not isinstance(payload.get("metadata"), dict):
        raise CheckpointError(f"{uri} is not a posepipe checkpoint: expected a dict with 'metadata', got "
                              f"{type(payload).__name__}; save it with save_checkpoint or `posepipe models fetch`")
    return payload["metadata"]


def read_metadata(uri: str, storage_options: dict | None = None, verify: bool = False) -> dict:
    """A checkpoint's metadata (model kind, input size, source...) without its weights: only the pickled structure
    of torch's zip file is read (tens of kB; a few range requests on object storage), its tensors left out. With
    `verify`, the whole file is loaded instead, so damaged weights are an error too.

    Raises:
        FileNotFoundError: nothing at `uri`.
        CheckpointError: not a readable posepipe checkpoint.
    """
    if verify:
        return payload_metadata(load_payload(uri, "cpu", storage_options), uri)
    fs, path = resolve(uri, storage_options)
    try:
        with fs.open(path, "rb") as file, zipfile.ZipFile(file) as archive:
            member = next(name for name in archive.namelist() if name.rsplit("/", 1)[-1] == "data.pkl")
            structure = StructureUnpickler(io.BytesIO(archive.read(member))).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {uri}; check the path, or train one with `posepipe train`") \
            from None
    except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{uri} is not a readable torch checkpoint (truncated or corrupt?): {exc}"
                              f"{reimport_hint(uri)}") from exc
    return payload_metadata(structure, uri)


class StructureUnpickler(pickle.Unpickler):
    """Unpickles the structure of a torch checkpoint with every tensor as None. Like torch's weights_only loading,
    it builds nothing but plain containers: any other class is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name.startswith("_rebuild_") or module == "torch" and name.endswith("Storage"):
            return lambda *args, **kwargs: None
        raise pickle.UnpicklingError(f"{module}.{name} has no place in a posepipe checkpoint")

    def persistent_load(self, pid: Any) -> None:  # a tensor's storage, which stays unread
        return None


def reimport_hint(uri: str) -> str:
    return "; import it again with `posepipe models fetch --force`" if os.path.basename(uri).startswith("blazepose-") \
        else ""


def resolve_checkpoint(uri: str) -> str:
    """Where `model.checkpoint` points: a model name such as `blazepose-heavy` is its file in the model cache
    (`posepipe models fetch` puts it there); a relative path resolves against the working directory, then the
    repository root; URIs stay as they are.

    Raises:
        CheckpointError: a model name whose file is not in the cache, saying which command puts it there.
    """
    from pipeline.models.blazepose.weights import MODEL_NAMES, cached_checkpoint

    if uri in MODEL_NAMES:
        path = cached_checkpoint(uri)
        if not path.is_file():
            raise CheckpointError(f"model {uri!r} is not in the model cache ({path.parent}); import it with "
                                  f"`posepipe models fetch` (make install runs it)")
        return str(path)
    if "://" in uri:
        return uri
    if os.path.isabs(uri) or os.path.exists(uri):
        return os.path.abspath(uri)
    repo_path = REPOSITORY / uri
    return str(repo_path) if repo_path.exists() else uri


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
                                f"`posepipe train`") from None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as exc:
        raise CheckpointError(f"{uri} ({len(data)} bytes) is not a readable torch checkpoint "
                              f"(truncated or corrupt?): {exc}{reimport_hint(uri)}") from exc
