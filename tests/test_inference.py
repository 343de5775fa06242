import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.models import runtime
from pipeline.models.bottomup import ModelConfig, PoseNet
from pipeline.models.pose_model import missing_keypoints
from pipeline.models.runtime import autocast_dtype, fold_batchnorm
from pipeline.stages.batch import VideoHeader, end_marker, frame_batch
from pipeline.stages.infer import PoseEstimator

from conftest import ray_block


def trained_looking(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so folding has something to get wrong."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_fold_batchnorm_removes_every_batchnorm_and_keeps_outputs():
    model = trained_looking(PoseNet(ModelConfig(width=8, feature_channels=16, head_channels=8)))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        for expected, got in zip(model(x), folded(x)):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_estimator_emits_rows_for_empty_frames_and_passes_end_markers(random_checkpoint):
    estimator = PoseEstimator(random_checkpoint, device="cpu")
    block = ray_block([frame_batch("v", np.arange(2), np.zeros(2), np.zeros((2, 128, 128, 3), np.uint8), 160, 120),
                       end_marker("v", 128, 2, header=VideoHeader(fps=25.0, duration_s=0.08))])
    out = estimator(block)                      # a black frame has nobody in it: one placeholder row per frame
    assert out["frame_index"].tolist() == [0, 1, -1] and out["person_index"].tolist() == [-1, -1, -1]
    assert out["is_end"].tolist() == [False, False, True] and out["num_frames"].tolist() == [0, 0, 2]
    np.testing.assert_array_equal(out["keypoints"], missing_keypoints(3))


def test_estimator_reads_frames_in_place_from_read_only_memory(random_checkpoint):
    """Ray hands frames as read-only views of its object store: used as they are, without torch's warning."""
    import warnings

    estimator = PoseEstimator(random_checkpoint, device="cpu")
    block = ray_block([frame_batch("v", np.arange(2), np.zeros(2), np.zeros((2, 128, 128, 3), np.uint8), 160, 120)])
    block["image"].flags.writeable = False
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)                 # torch warns once per process: another test may have used it up
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            assert estimator(block)["person_index"].tolist() == [-1, -1]
    finally:
        torch.set_warn_always(warn_always)


def test_flip_test_predictions_are_mirror_symmetric():
    """With flip_test, a mirrored frame gives mirrored maps, left and right swapped, and so the mirrored people.

    The maps agree to float rounding; the people agree except where grouping meets a near-tie (two candidates of
    almost equal limb score, or NMS plateaus broken in raster order, which a mirror reverses)."""
    from pipeline.models.bottomup import forward_flip_averaged, unmirror_outputs
    from pipeline.pose.keypoints import FLIP_INDEX
    from pipeline.pose.letterbox import normalize
    from pipeline.synthetic import render_scene

    image, _ = render_scene(np.random.default_rng(5), (256, 256), num_people=2, person_height=(150.0, 200.0))
    estimator = PoseEstimator("models/posepipe-synthetic.pt", device="cpu", flip_test=True)
    frames = np.stack([image, image[:, ::-1].copy()])
    with torch.inference_mode():
        heatmaps, pafs = forward_flip_averaged(estimator.model.network, normalize(torch.from_numpy(frames)))
    mirrored = unmirror_outputs(heatmaps[1:], pafs[1:])
    torch.testing.assert_close(mirrored[0], heatmaps[:1], rtol=0, atol=1e-4)
    torch.testing.assert_close(mirrored[1], pafs[:1], rtol=0, atol=1e-4)

    (kp, scores), (kp_m, scores_m) = estimator.predict(frames)
    assert len(kp) >= 1 and len(kp) == len(kp_m)
    kp_m = kp_m[:, list(FLIP_INDEX)]
    kp_m[..., 0] = 255 - kp_m[..., 0]                         # input pixel x mirrors to S - 1 - x (S = 256)
    order, order_m = np.argsort(np.nanmean(kp[..., 0], 1)), np.argsort(np.nanmean(kp_m[..., 0], 1))
    same = np.all(np.abs(kp[order] - kp_m[order_m]) < 4e-2, axis=-1)  # (P, K), input pixels = 4 heatmap pixels
    assert same.mean() >= 0.9, f"{(~same).sum()} of {same.size} keypoints differ between the frame and its mirror"


def test_auto_precision_takes_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, caplog):
    cpu = torch.device("cpu")
    assert isinstance(runtime.cpu_has_native_bf16(), bool)
    assert autocast_dtype("fp32", cpu) is None
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype("auto", cpu) is None
    with caplog.at_level(logging.WARNING, logger="pipeline.models.runtime"):
        assert autocast_dtype("bf16", cpu) is torch.bfloat16  # honoured, but slow: the user is told
    assert "emulated" in caplog.text
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype("auto", cpu) is torch.bfloat16
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.models.runtime"):
        assert autocast_dtype("fp16", cpu) is None            # no fast fp16 on CPUs: fp32, and the user is told
    assert "runs as fp32 on a CPU" in caplog.text
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("int8", cpu)


PAGE_FAULTS_PER_FORWARD = """
import resource, sys, torch
from pipeline.models.runtime import keep_freed_memory, prepare_model
from pipeline.models.bottomup import ModelConfig, PoseNet
if sys.argv[1] == "keep" and not keep_freed_memory():
    sys.exit(3)
torch.set_num_threads(1)
model, x = prepare_model(PoseNet(ModelConfig())), torch.randn(8, 3, 256, 256)
faults = []
with torch.inference_mode():
    for _ in range(7):                                          # the first two fault the working set in
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[2:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts and mallopt are glibc/Linux")
def test_keep_freed_memory_stops_each_batch_from_faulting_its_activations_in_again():
    def faults(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", PAGE_FAULTS_PER_FORWARD, mode], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
        if out.returncode == 3:
            pytest.skip("this C library has no mallopt")
        assert out.returncode == 0, out.stderr
        return float(out.stdout.split()[-1])

    kept, default = faults("keep"), faults("default")       # the fewest of five forwards after the warm-up
    # On some CPUs the default faults nothing either (CI's machine: 0 per forward), and kept must then stay near
    # zero; on the project's AVX-512 EPYC the default faults ~10,700 pages per forward and kept must cut that 20-fold.
    assert kept <= max(default / 20, 64), f"page faults per forward: {kept:.0f} kept, {default:.0f} by default"


def test_scores_of_real_output_are_confidences_in_0_1():
    """Keypoint and person scores of the trained bottom-up net on rendered people: heatmap peaks can overshoot 1."""
    from pipeline.synthetic import render_scene

    rng = np.random.default_rng(0)
    estimator = PoseEstimator("models/posepipe-synthetic.pt", device="cpu", precision="fp32")
    frames = np.stack([render_scene(rng, (256, 256), num_people=3)[0] for _ in range(8)])
    people = estimator.predict(frames)
    keypoints = np.concatenate([kp for kp, _ in people])
    scores = np.concatenate([sc for _, sc in people])
    assert len(scores) >= 8
    assert keypoints[..., 2].min() >= 0 and keypoints[..., 2].max() <= 1 and keypoints[..., 2].max() > 0.9
    assert scores.min() >= 0 and scores.max() <= 1
