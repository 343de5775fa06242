import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models.bottomup import ModelConfig, PoseNet, count_parameters, deepen
from pipeline.pose.keypoints import NUM_KEYPOINTS, NUM_LIMBS

TINY = ModelConfig(input_size=64, width=8, stage_blocks=(1, 1, 1), feature_channels=16, head_channels=8, head_convs=1)


@pytest.fixture(scope="module")
def tiny_model() -> PoseNet:
    torch.manual_seed(0)
    return PoseNet(TINY).eval()


@pytest.mark.parametrize("height, width", [(64, 64), (72, 40), (36, 100)])  # also sizes not divisible by 32
def test_output_shapes(tiny_model, height, width):
    x = torch.randn(2, 3, height, width)
    with torch.inference_mode():
        features = tiny_model.forward_features(x)
        heatmaps, pafs = tiny_model(x)
    assert features.shape == (2, TINY.feature_channels, height // 4, width // 4)
    assert heatmaps.shape == (2, NUM_KEYPOINTS, height // 4, width // 4)
    assert pafs.shape == (2, 2 * NUM_LIMBS, height // 4, width // 4)
    assert PoseNet.stride == 4


def test_default_model_shapes_and_cost():
    """The default (the shipped checkpoint's architecture) must stay cheap enough to train on 2 CPU cores:
    0.5-1.2 GMACs per 256x256 image."""
    model = PoseNet()
    x = torch.randn(1, 3, 256, 256)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        heatmaps, pafs = model(x)
    assert heatmaps.shape == (1, NUM_KEYPOINTS, 64, 64) and pafs.shape == (1, 2 * NUM_LIMBS, 64, 64)
    with torch.inference_mode():
        assert model.forward_features(x).shape == (1, ModelConfig().feature_channels, 64, 64)
    macs = counter.get_total_flops() / 2
    assert 0.5e9 <= macs <= 1.2e9, f"{macs / 1e9:.3f} GMACs"
    assert 0.5e6 < count_parameters(model) < 5e6


def test_initial_outputs_are_near_zero(tiny_model):
    """Heads start near the all-zero background of both targets, so early MSE is small and stable."""
    with torch.inference_mode():
        heatmaps, pafs = tiny_model(torch.randn(2, 3, 64, 64))
    assert heatmaps.abs().max() < 0.1 and pafs.abs().max() < 0.1


def test_channels_last_and_bf16_autocast_match_fp32(tiny_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        reference = tiny_model(x)
        model_cl = PoseNet(TINY).eval().to(memory_format=torch.channels_last)
        model_cl.load_state_dict(tiny_model.state_dict())
        channels_last = model_cl(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny_model(x)
    for ref, cl, bf in zip(reference, channels_last, low):
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-6)
        assert bf.dtype == torch.bfloat16 and torch.isfinite(bf).all()
        torch.testing.assert_close(bf.float(), ref, rtol=0.1, atol=0.02 * ref.abs().max().item())


def test_a_few_steps_fit_one_batch():
    torch.manual_seed(0)
    model = PoseNet(TINY).train()
    x = torch.randn(4, 3, 64, 64)
    target_heatmaps = torch.zeros(4, NUM_KEYPOINTS, 16, 16)
    target_heatmaps[:, :, 8, 8] = 1.0
    target_pafs = torch.zeros(4, 2 * NUM_LIMBS, 16, 16)
    target_pafs[:, 0::2, 4:12, 8] = 1.0
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        heatmaps, pafs = model(x)
        loss = torch.nn.functional.mse_loss(heatmaps, target_heatmaps) + torch.nn.functional.mse_loss(pafs, target_pafs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.6 * losses[0], losses


def test_config_round_trips_through_json():
    config = ModelConfig(width=16, stage_blocks=(1, 1, 2))
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and isinstance(restored.stage_blocks, tuple)
    assert ModelConfig.from_dict({}) == ModelConfig()
    model = PoseNet(restored)
    PoseNet(ModelConfig.from_dict(config.to_dict())).load_state_dict(model.state_dict())  # same architecture


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown ModelConfig keys.*'widht'"):
        ModelConfig.from_dict({"widht": 16})
    with pytest.raises(ValueError, match="input_size"):
        ModelConfig(input_size=250)
    with pytest.raises(ValueError, match="stage_blocks"):
        ModelConfig(stage_blocks=(1, 0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        PoseNet(TINY)(torch.randn(1, 3, 30, 30))


def test_unmirror_outputs_maps_mirrored_targets_back_exactly():
    """The targets of a mirrored image, unmirrored, are the targets of the image: channels, limbs and signs."""
    from pipeline.models.bottomup import unmirror_outputs
    from pipeline.training.dataset import TargetConfig, encode_targets, transform_keypoints

    rng = np.random.default_rng(3)
    keypoints = np.concatenate([rng.uniform(20, 230, (2, NUM_KEYPOINTS, 2)), np.full((2, NUM_KEYPOINTS, 1), 2.0)], -1)
    mirror = np.array([[-1.0, 0, 255], [0, 1, 0], [0, 0, 1]])   # input pixel x -> 255 - x, as dataset.sample_affine
    targets = TargetConfig()
    heatmaps, pafs = encode_targets(keypoints, 256, targets)
    mirrored = encode_targets(transform_keypoints(keypoints, mirror, flipped=True), 256, targets)
    back = unmirror_outputs(*(torch.from_numpy(m)[None] for m in mirrored))
    assert np.abs(heatmaps).max() > 0.9 and np.abs(pafs).max() > 0.9
    np.testing.assert_allclose(back[0][0].numpy(), heatmaps, atol=1e-5)
    np.testing.assert_allclose(back[1][0].numpy(), pafs, atol=1e-5)


def test_flip_averaged_outputs_of_a_mirrored_image_are_the_mirror(tiny_model):
    from pipeline.models.bottomup import forward_flip_averaged, unmirror_outputs

    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        direct = forward_flip_averaged(tiny_model, x)
        via_mirror = unmirror_outputs(*forward_flip_averaged(tiny_model, x.flip(-1)))
        plain = tiny_model(x)
    for a, b in zip(direct, via_mirror):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(direct[0], plain[0])


@pytest.mark.parametrize("training", [False, True])
def test_deepen_adds_blocks_that_start_as_the_identity(training):
    torch.manual_seed(0)
    model = PoseNet(TINY)
    with torch.no_grad():  # trained-looking BatchNorms: the identity must not rely on their defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 2)
    model.train(training)
    grown = deepen(model, (1, 3, 2))
    assert grown.config.stage_blocks == (1, 3, 2) and grown.training == training
    assert count_parameters(grown) > count_parameters(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), grown(x)):
            torch.testing.assert_close(a, b)


def test_deepen_only_adds_blocks():
    model = PoseNet(TINY)
    with pytest.raises(ValueError, match="add blocks"):
        deepen(model, (1, 1))
    with pytest.raises(ValueError, match="add blocks"):
        deepen(model, (1, 0, 2))
