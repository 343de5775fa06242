"""Shared fixtures: real encoded videos, a random-weights checkpoint, one local Ray for the session."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import av
import cv2  # noqa: F401  (cv2 and av before decord: decord's bundled libraries break PNG reading and libvpx otherwise)
import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # local test clusters only
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def encode_video(path: str | Path, num_frames: int = 24, width: int = 160, height: int = 120, fps: int = 12,
                 codec: str = "libx264") -> Path:
    """A real encoded video whose frame t shows a bright bar at x = 4 t (so decoded frames can be told apart)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            image = np.full((height, width, 3), 60, np.uint8)
            x = (4 * t) % (width - 8)
            image[:, x:x + 8] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ray_block(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Frame batches as the inference actor gets them from Ray Data: packed (one row each), built into one Arrow
    block by Ray's own builder and handed over in numpy format (tensors of several shapes as object arrays)."""
    from ray.data._internal.delegating_block_builder import DelegatingBlockBuilder
    from ray.data.block import BlockAccessor

    from pipeline.stages.batch import pack

    builder = DelegatingBlockBuilder()
    for batch in batches:
        builder.add_batch(pack(batch))
    return BlockAccessor.for_block(builder.build()).to_batch_format("numpy")


@contextlib.contextmanager
def s3_server(key_id: str = "testing", secret: str = "testing", endpoint_in_env: bool = False) -> Iterator[str]:
    """A real S3-compatible server (moto's) on 127.0.0.1 and an AWS credential chain (environment) for it; yields
    the endpoint URL. `endpoint_in_env` also sets AWS_ENDPOINT_URL, so every process finds the server by itself.
    The environment is restored afterwards.

    The server runs in its own process, as a real one does: deltalake's calls hold the GIL while they wait on the
    network, so a server thread in the test's process would never answer them."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"moto's S3 server did not start on {endpoint}")
            time.sleep(0.1)
    patch = pytest.MonkeyPatch()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        patch.delenv(name, raising=False)
    patch.setenv("AWS_ACCESS_KEY_ID", key_id)
    patch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if endpoint_in_env:
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
    try:
        yield endpoint
    finally:
        patch.undo()
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> str:
    """A checkpoint of an untrained, small network: tests of mechanics, not accuracy."""
    import torch

    from pipeline.models.bottomup import ModelConfig, PoseNet
    from pipeline.models.checkpoint import checkpoint_metadata, save_checkpoint

    config = ModelConfig(input_size=128)
    path = tmp_path_factory.mktemp("model") / "random.pt"
    with torch.random.fork_rng():  # the same weights every session: a failure reproduces
        torch.manual_seed(0)
        network = PoseNet(config)
    save_checkpoint(network, str(path), checkpoint_metadata(config))
    return str(path)


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for the whole session (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
