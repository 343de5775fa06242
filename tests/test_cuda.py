"""The top-down model on a CUDA GPU: the CPU's people in fp32 with TF32 off, bf16 and fp16, compiled nets, the GPU crop
sampler, and the host-device waits per decoded batch. Skipped without a GPU; `infra/gpu/check.sh` runs them on one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pipeline.models.blazepose.roi import crop_matrices, gather_rois, warp_rois
from pipeline.models.blazepose.topdown import TopDownConfig
from pipeline.photos import group_frames
from pipeline.pose.letterbox import Letterbox
from pipeline.stages.infer import PoseEstimator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (infra/gpu/check.sh)")

PICTURE = (640, 360)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """32 letterboxed frames of the benchmark's real people under a panning camera, (32, 1024, 1024, 3) uint8."""
    letterbox = Letterbox.fit(*PICTURE, 1024)
    return np.stack([letterbox.apply(frame) for frame in group_frames(32, PICTURE)])


def people(estimator: PoseEstimator, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    n = len(frames)
    return estimator.predict(frames, np.full(n, PICTURE[0]), np.full(n, PICTURE[1]), [list(range(n))])


def assert_same_people(got, expected, tolerance_px: float, min_match: float = 0.95) -> None:
    """Per frame the same number of people (in `min_match` of frames), and their keypoints within tolerance."""
    same = [len(g[1]) == len(e[1]) for g, e in zip(got, expected)]
    assert np.mean(same) >= min_match, f"people counts differ in {same.count(False)} of {len(same)} frames"
    errors = [np.nanmedian(np.linalg.norm(g[0][:, :, :2] - e[0][:, :, :2], axis=-1))
              for (g, e), ok in zip(zip(got, expected), same) if ok and len(e[1])]
    assert errors and np.median(errors) < tolerance_px, f"median keypoint error {np.median(errors):.2f} px"


@pytest.fixture(scope="module")
def on_cpu(frames):
    return people(PoseEstimator("blazepose-heavy", device="cpu", precision="fp32", threads=4), frames)


def test_fp32_on_the_gpu_finds_the_cpus_people_with_tf32_off(frames, on_cpu):
    estimator = PoseEstimator("blazepose-heavy", device="cuda", precision="fp32")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert estimator.model.runtime == "torch" and estimator.model_dtype == torch.float32
    assert_same_people(people(estimator, frames), on_cpu, tolerance_px=0.5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_find_the_people(frames, on_cpu, precision):
    estimator = PoseEstimator("blazepose-heavy", device="cuda", precision=precision)
    assert estimator.model_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert_same_people(people(estimator, frames), on_cpu, tolerance_px=3.0, min_match=0.8)


def test_compiled_nets_on_the_gpu_find_the_same_people(frames):
    eager = PoseEstimator("blazepose-heavy", device="cuda", precision="fp32")
    compiled = PoseEstimator("blazepose-heavy", device="cuda", precision="fp32", compile_model=True)
    assert_same_people(people(compiled, frames[:8]), people(eager, frames[:8]), tolerance_px=0.5)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_the_gpu_crop_sampler_cuts_the_cpus_crops(frames, padding_mode):
    rois = torch.tensor([[0, 500.3, 400.7, 300, 0.3], [5, 900, 700, 500, -2.0], [31, 320, 500, 90, 3.1]])
    frame, matrices = rois[:, 0].long(), crop_matrices(rois, 256)
    on_gpu = gather_rois(torch.from_numpy(frames).cuda(), frame.cuda(), matrices.cuda(), 256, padding_mode).cpu()
    assert (on_gpu - warp_rois(torch.from_numpy(frames), frame, matrices, 256, padding_mode)).abs().max() < 0.1


def test_a_decoded_batch_waits_on_the_device_at_most_detect_every_plus_two_times(frames):
    """Host-device synchronisations of one 32-frame batch of one video (torch's sync debug mode counts each; on a
    CPU, tests/test_topdown.py counts the host reads of the same code path)."""
    config = TopDownConfig()
    estimator = PoseEstimator("blazepose-heavy", device="cuda", precision="fp32", topdown=config)
    people(estimator, frames)                                                  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            people(estimator, frames)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= config.detect_every + 2, "\n".join(str(w.message) for w in syncs)
