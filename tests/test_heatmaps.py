import numpy as np
import pytest
import torch

from pipeline.pose.heatmaps import (
    _max_3x3,
    box_maxima,
    decode_heatmaps,
    decode_heatmaps_torch,
    encode_heatmaps,
    find_peaks,
    heatmap_to_input,
    input_to_heatmap,
    smooth_heatmaps,
)


def one_keypoint(x: float, y: float, v: float = 1.0) -> np.ndarray:
    return np.array([[[x, y, v]]], np.float32)  # (N=1, K=1, 3)


def test_coordinate_transform_maps_pixel_centres_and_round_trips():
    h = np.array([[0.0, 0.0], [1.0, 2.0], [np.nan, 3.0]])
    u = heatmap_to_input(h, stride=4)
    np.testing.assert_allclose(u[:2], [[1.5, 1.5], [5.5, 9.5]])  # centre of the 4x4 block [0, 3] is 1.5
    assert np.isnan(u[2, 0])
    np.testing.assert_allclose(input_to_heatmap(u, stride=4), h)
    t = torch.tensor([[0.25, 7.0]])
    torch.testing.assert_close(input_to_heatmap(heatmap_to_input(t, stride=8), stride=8), t)
    # the heatmap's full extent [-0.5, W - 0.5] covers the input's full extent [-0.5, 4W - 0.5]
    np.testing.assert_allclose(heatmap_to_input(np.array([-0.5, 63.5]), 4), [-0.5, 255.5])


def test_encode_draws_unit_peak_gaussians_combined_by_max():
    kp = np.array(
        [[[5, 6, 2], [0, 0, 0], [3, 3, 1]], [[5, 8, 1], [4, 4, 1], [np.nan, np.nan, 1]]], np.float32
    )  # (N=2, K=3, 3)
    maps = encode_heatmaps(kp, (12, 10), sigma=2.0)
    assert maps.shape == (3, 12, 10) and maps.dtype == np.float32
    assert maps[0, 6, 5] == pytest.approx(1.0) and maps[0, 8, 5] == pytest.approx(1.0)  # two people, max not sum
    assert maps[0, 7, 5] == pytest.approx(np.exp(-1 / 8))  # max, not sum, of the two tails
    assert maps[1, 4, 4] == pytest.approx(1.0) and maps[1, 0, 0] < 0.02  # invisible person-0 keypoint not drawn
    assert maps[2].max() == pytest.approx(1.0)  # NaN keypoint of person 1 skipped, person 0 drawn
    assert maps[0, 0, 9] == pytest.approx(np.exp(-(6**2 + 4**2) / 8), rel=1e-5)
    assert encode_heatmaps(np.zeros((0, 17, 3)), (4, 5)).shape == (17, 4, 5)


@pytest.mark.parametrize(
    "x, y, size",
    [
        (10.3, 7.8, (64, 64)),
        (20.5, 11.5, (47, 33)),  # half-pixel: plateau between two pixels
        (0.2, 5.7, (47, 33)),  # near the left border
        (-0.3, 46.4, (47, 33)),  # just outside the first column centre, near the bottom
        (32.45, 0.1, (47, 33)),  # last column, top row
        (3.0, 4.0, (9, 6)),  # integer, tiny map
    ],
)
def test_encode_decode_round_trip_is_subpixel_exact(x, y, size):
    maps = encode_heatmaps(one_keypoint(x, y), size, sigma=2.0)  # (1, H, W)
    xy, score = decode_heatmaps(maps[None])
    assert xy.shape == (1, 1, 2) and score.shape == (1, 1)
    assert np.abs(xy[0, 0] - [x, y]).max() < 0.05
    assert score[0, 0] == pytest.approx(maps.max())
    xy_t, score_t = decode_heatmaps_torch(torch.from_numpy(maps[None]))
    np.testing.assert_allclose(xy_t.numpy(), xy, atol=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_round_trip_other_sigmas(sigma):
    maps = encode_heatmaps(one_keypoint(12.37, 9.81), (24, 30), sigma=sigma)
    xy, _ = decode_heatmaps(maps[None])
    np.testing.assert_allclose(xy[0, 0], [12.37, 9.81], atol=0.05)


def test_decode_is_robust_on_flat_zero_and_negative_maps():
    maps = np.zeros((2, 3, 8, 7), np.float32)
    maps[0, 1] = 0.5  # flat
    maps[0, 2] = -np.abs(np.random.default_rng(0).normal(size=(8, 7)))  # raw network output can be negative
    maps[1, 0, 3, 4] = 0.9  # a lone spike: neighbours at zero
    xy, score = decode_heatmaps(maps)
    assert np.isfinite(xy).all() and np.isfinite(score).all()
    assert score[0, 0] == 0 and score[0, 1] == 0.5 and score[1, 0] == pytest.approx(0.9)
    np.testing.assert_allclose(xy[1, 0], [4, 3], atol=0.5)
    assert (xy >= -0.5).all() and (xy[..., 0] <= 6.5).all() and (xy[..., 1] <= 7.5).all()


def test_decode_torch_accepts_low_precision():
    maps = encode_heatmaps(one_keypoint(9.3, 5.6), (16, 16))[None]  # (1, 1, 16, 16)
    xy, score = decode_heatmaps_torch(torch.from_numpy(maps).to(torch.bfloat16))
    assert xy.dtype == torch.float32 and score.dtype == torch.float32
    np.testing.assert_allclose(xy[0, 0].numpy(), [9.3, 5.6], atol=0.1)  # bf16 has ~3 significant digits


def test_decode_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        decode_heatmaps(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match=r"\(N, K, 3\)"):
        encode_heatmaps(np.zeros((17, 3)), (8, 8))


def test_find_peaks_returns_each_person_sorted_and_padded():
    kp = np.array([[[10.3, 12.6, 1], [0, 0, 0]], [[30.7, 20.2, 1], [5, 5, 1]], [[50.1, 40.9, 1], [0, 0, 0]]])
    maps = encode_heatmaps(kp, (48, 64))  # (K=2, 48, 64)
    maps[0] *= np.where(np.arange(64) > 40, 0.5, 1.0)  # third person's keypoint weaker
    peaks = find_peaks(torch.from_numpy(maps[None]), threshold=0.1, max_peaks=5)
    assert peaks.shape == (1, 2, 5, 3) and peaks.dtype == torch.float32
    p = peaks[0, 0].numpy()
    assert (p[:3, 2] > 0).all() and (p[3:, 2] == 0).all() and np.isnan(p[3:, :2]).all()
    assert p[2, 2] == pytest.approx(0.5, abs=0.02)  # lowest last
    found = sorted(map(tuple, p[:3, :2].round(2)))
    np.testing.assert_allclose(found, [(10.3, 12.6), (30.7, 20.2), (50.1, 40.9)], atol=0.05)
    assert (peaks[0, 1, :, 2] > 0).sum() == 1


def test_find_peaks_threshold_max_peaks_and_plateaus():
    heights = np.array([1.0, 0.9, 0.7], np.float32)[:, None, None]
    blobs = encode_heatmaps(np.array([[[4.5, 6.5, 1], [15, 3, 1], [9, 12, 1]]]), (16, 20))  # (3, 16, 20)
    maps = (blobs * heights).max(axis=0)[None, None]  # (1, 1, 16, 20), one keypoint type, three people
    t = torch.from_numpy(maps)
    all_peaks = find_peaks(t, threshold=0.0, max_peaks=10)[0, 0]
    assert int((all_peaks[:, 2] > 0).sum()) == 3  # the 2x2 plateau at (4.5, 6.5) gives one peak, not four
    top = find_peaks(t, threshold=0.0, max_peaks=2)[0, 0]
    torch.testing.assert_close(top, all_peaks[:2])
    assert int((find_peaks(t, threshold=0.8, max_peaks=10)[0, 0, :, 2] > 0).sum()) == 2
    tiny = find_peaks(torch.zeros(2, 3, 2, 2), max_peaks=6)
    assert tiny.shape == (2, 3, 6, 3) and (tiny[..., 2] == 0).all()
    with pytest.raises(ValueError, match="threshold"):
        find_peaks(t, threshold=-1.0)


def test_smooth_heatmaps_keeps_gaussian_peaks_and_merges_ripples():
    kp = np.array([[[10.3, 12.6, 1]], [[30.7, 20.2, 1]]])
    maps = torch.from_numpy(encode_heatmaps(kp, (32, 48))[None])  # (1, 1, 32, 48)
    smooth = smooth_heatmaps(maps, 1.0)
    assert smooth.shape == maps.shape and smooth.max() == pytest.approx(float(maps.max()), abs=1e-6)
    peaks = find_peaks(smooth, threshold=0.1, max_peaks=4)[0, 0].numpy()
    found = sorted(map(tuple, peaks[peaks[:, 2] > 0, :2]))
    np.testing.assert_allclose(found, [(10.3, 12.6), (30.7, 20.2)], atol=0.02)  # a blurred Gaussian: same centre
    assert smooth_heatmaps(maps, 0.0) is maps
    ripple = torch.zeros(1, 1, 9, 9)
    ripple[0, 0, 4, 3], ripple[0, 0, 4, 5] = 0.8, 0.7  # two maxima 2 px apart: noise around one keypoint
    assert (find_peaks(ripple, 0.1)[0, 0, :, 2] > 0).sum() == 2
    assert (find_peaks(smooth_heatmaps(ripple, 1.0), 0.1)[0, 0, :, 2] > 0).sum() == 1


def test_box_maxima_finds_the_peak_inside_each_box_only():
    kp = np.array([[[10.3, 12.6, 1]], [[30.7, 20.2, 1]]])
    maps = torch.from_numpy(encode_heatmaps(kp, (32, 48))[None]).repeat(2, 1, 1, 1)  # (B=2, K=1, 32, 48)
    maps[1] *= 0.5
    boxes = torch.tensor([[0, 0, 20, 20], [25, 15, 40, 25], [25, 15, 40, 25], [44.2, 3.1, 44.8, 3.9]])
    out = box_maxima(maps, torch.tensor([0, 0, 1, 0]), boxes).numpy()  # (4, K=1, 3)
    np.testing.assert_allclose(out[0, 0], [10.3, 12.6, maps[0, 0].max()], atol=0.02)  # the other peak is outside
    np.testing.assert_allclose(out[1, 0, :2], [30.7, 20.2], atol=0.02)
    assert out[2, 0, 2] == pytest.approx(out[1, 0, 2] / 2, rel=1e-5)                  # the box's own image
    assert np.isnan(out[3, 0, :2]).all() and out[3, 0, 2] == 0                          # no pixel centre inside


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 1, 1, 4), (1, 2, 3, 1)])
def test_max_3x3_is_max_pool(shape):
    torch.manual_seed(0)
    maps = torch.randn(shape)
    torch.testing.assert_close(_max_3x3(maps), torch.nn.functional.max_pool2d(maps, 3, stride=1, padding=1),
                               rtol=0, atol=0)
