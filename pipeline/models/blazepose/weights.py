"""Real-trained pose weights: MediaPipe's BlazePose graphs, imported from a registry package into posepipe checkpoints.

The npm package `@mediapipe/pose` (Apache-2.0) carries the person detector (packed for the web as
`pose_solution_packed_assets.data`: the graph of the `mediapipe` wheels' `pose_detection.tflite`, every weight equal,
in a file 3 kB larger) and the lite, full and heavy landmark nets. `fetch_models` obtains that one archive (with
`npm pack`, or straight from the registry over HTTPS where npm is missing), checks its sha256 and every graph's,
converts the graphs into the torch modules of this package (`convert.load_graph_weights`: every op checked, nothing
guessed) and saves one checkpoint per landmark variant, detector included, in the model cache (`cache_dir()`) or any
folder or URI.

A checkpoint is the usual `torch.save` payload (`pipeline.models.checkpoint.save_payload`): {"metadata", "detector",
"landmarks"} with the weights stored as fp16 wherever the graph stored them so (all but a few biases; lossless).
`model.checkpoint: blazepose-heavy` names the cached file; a path or URI works as for any checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import torch

from pipeline.models.blazepose.detector import INPUT_SIZE as DETECTOR_INPUT_SIZE
from pipeline.models.blazepose.detector import PersonDetector
from pipeline.models.blazepose.landmarks import INPUT_SIZE as CROP_SIZE
from pipeline.models.blazepose.landmarks import VARIANTS, LandmarkNet
from pipeline.models.blazepose.topdown import COCO_FROM_BLAZEPOSE
from pipeline.pose.keypoints import KEYPOINT_NAMES, SKELETON
from pipeline.storage import join, resolve, write_bytes_atomic

logger = logging.getLogger(__name__)

PACKAGE, VERSION = "@mediapipe/pose", "0.5.1675469404"
ARCHIVE_URL = "https://registry.npmjs.org/@mediapipe/pose/-/pose-0.5.1675469404.tgz"
ARCHIVE_SHA256 = "8bb349a7b3a3ba699df23be804ddd3b3eab810b50b15406894be257859388a84"
LICENSE = "Apache-2.0"
LICENSE_URL = "https://github.com/google-ai-edge/mediapipe/blob/master/LICENSE"
GRAPHS = {  # graph -> (member of the archive, sha256)
    "detector": ("package/pose_solution_packed_assets.data",
                 "a63c614bef30d35947f13be361820b1e4e3bec9cfeebf4d11216a18373108e85"),
    "lite": ("package/pose_landmark_lite.tflite", "f17bfbecadb61c3be1baa8b8d851cc6619c870a87167b32848ad20db306b9d61"),
    "full": ("package/pose_landmark_full.tflite", "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
    "heavy": ("package/pose_landmark_heavy.tflite", "59e42d71bcd44cbdbabc419f0ff76686595fd265419566bd4009ef703ea8e1fe"),
}
FRAME_SIZE = 1024                # frames are letterboxed to this square before detection and cropping
CHECKPOINT_KIND = "topdown"


class WeightsError(RuntimeError):
    """The weights archive or a graph in it is not what posepipe imports; the message says what was expected."""


def model_name(variant: str) -> str:
    return f"blazepose-{variant}"


MODEL_NAMES = {model_name(v): v for v in VARIANTS}


def cache_dir() -> Path:
    """Where imported checkpoints live: $POSEPIPE_CACHE, else $XDG_CACHE_HOME/posepipe, else ~/.cache/posepipe."""
    root = os.environ.get("POSEPIPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "posepipe")
    return Path(root) / "models"


def cached_checkpoint(name: str) -> Path:
    """The cache path of a model name such as `blazepose-heavy`."""
    return cache_dir() / f"{name}.pt"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_archive(folder: Path) -> Path:
    """The package tarball in `folder`, by `npm pack` where npm is installed, else over HTTPS from the registry."""
    folder.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm:
        done = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=folder, capture_output=True,
                              text=True, timeout=600)
        if done.returncode == 0:
            return folder / done.stdout.strip().splitlines()[-1]
        logger.warning("npm pack failed (%s); downloading %s instead", done.stderr.strip()[-200:], ARCHIVE_URL)
    target = folder / ARCHIVE_URL.rsplit("/", 1)[1]
    with urllib.request.urlopen(ARCHIVE_URL, timeout=600) as response:
        target.write_bytes(response.read())
    return target


def cached_archive() -> Path:
    """Where the package tarball is kept once fetched (the fidelity tests read the original graphs from it)."""
    return cache_dir() / "archives" / ARCHIVE_URL.rsplit("/", 1)[1]


def read_archive(archive: str | None = None) -> bytes:
    """The package tarball's bytes: the cached copy, else `archive`, else downloaded; then cached. A cached copy that
    fails its checksum is replaced.

    Raises:
        WeightsError: it cannot be obtained, or it is not the expected archive.
    """
    cached = cached_archive()
    try:
        if cached.is_file() and sha256(data := cached.read_bytes()) == ARCHIVE_SHA256:
            return data
        if archive:
            data = checked_archive(Path(archive).read_bytes(), archive)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                data = checked_archive(download_archive(Path(tmp)).read_bytes(), "the downloaded archive")
    except (OSError, subprocess.SubprocessError) as exc:
        raise WeightsError(f"could not obtain {PACKAGE}@{VERSION} ({exc}); download {ARCHIVE_URL} by hand and pass "
                           f"it with --archive") from exc
    write_bytes_atomic(*resolve(str(cached)), data)
    return data


def checked_archive(data: bytes, name: str) -> bytes:
    if sha256(data) != ARCHIVE_SHA256:
        raise WeightsError(f"{name} is not {PACKAGE}@{VERSION}: expected sha256 {ARCHIVE_SHA256}, got {sha256(data)}")
    return data


def read_graphs(archive: bytes, names: list[str]) -> dict[str, bytes]:
    """The graph files `names` from the archive's bytes, each checked against its sha256.

    Raises:
        WeightsError: a graph is not the expected one.
    """
    graphs = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for name in names:
            member, expected = GRAPHS[name]
            data = tar.extractfile(member).read()
            if sha256(data) != expected:
                raise WeightsError(f"{member} in {PACKAGE}@{VERSION} has sha256 {sha256(data)}, expected {expected}")
            graphs[name] = data
    return graphs


def convert_detector(data: bytes) -> PersonDetector:
    return convert_graph(PersonDetector(), data, "the BlazePose person detector (pose_detection.tflite)",
                         lambda module, x: module(x, graph_order=True))


def convert_landmarks(data: bytes, variant: str) -> LandmarkNet:
    return convert_graph(LandmarkNet(VARIANTS[variant]), data,
                         f"the BlazePose landmark net {variant} (pose_landmark_{variant}.tflite)",
                         lambda module, x: module(x, segmentation=True))


def convert_graph(module: torch.nn.Module, data: bytes, expected: str, forward=None) -> torch.nn.Module:
    """A .tflite graph's weights in `module`; a graph of another model is refused naming what was `expected`."""
    from pipeline.models.blazepose.convert import (  # conversion only: `tflite` package
        ConversionError,
        load_graph_weights,
    )
    from pipeline.models.blazepose.tflite_graph import UnsupportedGraph, read_graph

    try:
        return load_graph_weights(module, read_graph(data), forward)
    except (ConversionError, UnsupportedGraph) as exc:
        raise WeightsError(f"this graph is not {expected}: {exc}") from None


def compact_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each tensor in fp16 where that loses nothing (the graphs store most weights as fp16)."""
    state = {}
    for key, value in module.state_dict().items():
        half = value.half()
        state[key] = half if torch.equal(half.float(), value) else value
    return state


def checkpoint_metadata(variant: str) -> dict[str, Any]:
    return {
        "kind": CHECKPOINT_KIND,
        "family": "blazepose",
        "variant": variant,
        "input_size": FRAME_SIZE,
        "detector_input_size": DETECTOR_INPUT_SIZE,
        "crop_size": CROP_SIZE,
        "keypoint_names": list(KEYPOINT_NAMES),
        "skeleton": [list(limb) for limb in SKELETON],
        "keypoint_mapping": {"source": "BlazePose 33 landmarks", "coco_from_source": list(COCO_FROM_BLAZEPOSE)},
        "source": {"registry": "npm", "package": PACKAGE, "version": VERSION, "url": ARCHIVE_URL,
                   "archive_sha256": ARCHIVE_SHA256,
                   "detector": {"file": GRAPHS["detector"][0], "sha256": GRAPHS["detector"][1]},
                   "landmarks": {"file": GRAPHS[variant][0], "sha256": GRAPHS[variant][1]}},
        "license": LICENSE,
        "license_url": LICENSE_URL,
    }


def fetch_models(variants: tuple[str, ...] = tuple(VARIANTS), out: str | None = None, archive: str | None = None,
                 force: bool = False, storage_options: dict | None = None) -> list[str]:
    """Import the BlazePose weights: one checkpoint per landmark variant at `out` (default: the cache).

    Checkpoints already there with the expected source are kept unless `force`. `archive` is a local copy of the
    package tarball (offline installs); otherwise it is downloaded. Returns the checkpoint URIs.

    Raises:
        WeightsError: a download or checksum failed, or a graph did not convert.
    """
    from pipeline.models.checkpoint import CheckpointError, read_metadata, save_payload

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise WeightsError(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    folder = out or str(cache_dir())
    targets = {v: join(folder, f"{model_name(v)}.pt") for v in variants}
    todo = []
    for variant, uri in targets.items():
        try:
            current = read_metadata(uri, storage_options, verify=True)["source"] == \
                checkpoint_metadata(variant)["source"]
        except (FileNotFoundError, CheckpointError, KeyError, TypeError):
            current = False
        if force or not current:
            todo.append(variant)
    if not todo:
        return list(targets.values())
    graphs = read_graphs(read_archive(archive), ["detector", *todo])
    detector = compact_state(convert_detector(graphs["detector"]))
    for variant in todo:
        landmarks = compact_state(convert_landmarks(graphs[variant], variant))
        save_payload({"metadata": checkpoint_metadata(variant), "detector": detector, "landmarks": landmarks},
                     targets[variant], storage_options)
        logger.info("saved %s (%s landmark net, detector included)", targets[variant], variant)
    return list(targets.values())


def build_modules(payload: dict, uri: str) -> tuple[PersonDetector, LandmarkNet]:
    """The detector and landmark net of a top-down checkpoint payload, float32, eval mode.

    Raises:
        KeyError, RuntimeError: the payload does not hold the weights its metadata describes.
    """
    metadata = payload["metadata"]
    variant = metadata["variant"]
    if variant not in VARIANTS:
        raise KeyError(f"unknown BlazePose variant {variant!r}")
    detector, landmarks = PersonDetector(), LandmarkNet(VARIANTS[variant])
    detector.load_state_dict({k: v.float() for k, v in payload["detector"].items()})
    landmarks.load_state_dict({k: v.float() for k, v in payload["landmarks"].items()})
    return detector.eval(), landmarks.eval()
