import numpy as np
import pytest
import torch

from pipeline.pose.keypoints import NUM_KEYPOINTS, NUM_LIMBS, SKELETON
from pipeline.pose.pafs import encode_pafs, score_limb_pairs, score_limbs

ONE_LIMB = ((0, 1),)


def limb(x0: float, y0: float, x1: float, y1: float, v: float = 1.0) -> np.ndarray:
    return np.array([[x0, y0, v], [x1, y1, v]], np.float32)  # (K=2, 3)


def test_encode_draws_unit_direction_within_limb_width_only():
    paf = encode_pafs(limb(4.2, 5.1, 20.7, 14.3)[None], (24, 30), ONE_LIMB, limb_width=1.0)  # (2, 24, 30)
    assert paf.shape == (2, 24, 30) and paf.dtype == np.float32
    direction = np.array([20.7 - 4.2, 14.3 - 5.1]) / np.hypot(20.7 - 4.2, 14.3 - 5.1)
    norm = np.hypot(paf[0], paf[1])
    on = norm > 0
    np.testing.assert_allclose(norm[on], 1.0, rtol=1e-5)
    np.testing.assert_allclose(paf[0][on], direction[0], rtol=1e-5)
    np.testing.assert_allclose(paf[1][on], direction[1], rtol=1e-5)
    ys, xs = np.nonzero(on)  # every drawn pixel lies within limb_width of the segment
    t = np.clip(((xs - 4.2) * direction[0] + (ys - 5.1) * direction[1]), 0, np.hypot(16.5, 9.2))
    dist = np.hypot(xs - 4.2 - t * direction[0], ys - 5.1 - t * direction[1])
    assert dist.max() <= 1.0 + 1e-5
    assert on[10, 12] and not on[20, 5]  # (12, 10) is on the segment, (5, 20) far away
    assert on.sum() > 2 * np.hypot(16.5, 9.2)  # a band about 2 px wide along the whole limb


def test_encode_skips_invisible_or_degenerate_limbs_and_averages_overlaps():
    hidden = limb(2, 2, 12, 2)
    hidden[1, 2] = 0
    point = limb(5, 5, 5, 5)
    assert not encode_pafs(np.stack([hidden, point]), (8, 16), ONE_LIMB).any()
    crossing = np.stack([limb(2, 6, 14, 6), limb(8, 0, 8, 12)])  # right-pointing and down-pointing, cross at (8, 6)
    paf = encode_pafs(crossing, (13, 16), ONE_LIMB)
    np.testing.assert_allclose(paf[:, 6, 8], [0.5, 0.5])  # averaged where both people's limbs lie
    np.testing.assert_allclose(paf[:, 6, 3], [1.0, 0.0])
    np.testing.assert_allclose(paf[:, 2, 8], [0.0, 1.0])


def test_encode_full_skeleton_channel_order():
    kp = np.zeros((1, NUM_KEYPOINTS, 3), np.float32)
    kp[0, :, 0] = np.arange(NUM_KEYPOINTS) * 3 + 2  # x
    kp[0, :, 1] = np.arange(NUM_KEYPOINTS) % 4 * 5 + 3  # y
    kp[0, :, 2] = 1
    pafs = encode_pafs(kp, (24, 56))
    assert pafs.shape == (2 * NUM_LIMBS, 24, 56)
    for i, (a, b) in enumerate(SKELETON):  # channels 2i, 2i+1 = direction of limb i
        d = kp[0, b, :2] - kp[0, a, :2]
        mid = np.round((kp[0, a, :2] + kp[0, b, :2]) / 2).astype(int)
        vector = pafs[2 * i : 2 * i + 2, mid[1], mid[0]]
        assert vector @ (d / np.linalg.norm(d)) > 0.5, f"limb {i} {a}->{b}"


def test_score_true_pair_high_reversed_negative_wrong_low():
    people = np.stack([limb(5, 5, 25, 15), limb(5, 30, 25, 20)])  # two parallel-ish limbs
    paf = encode_pafs(people, (36, 32), ONE_LIMB)
    starts, ends = people[:, 0, :2], people[:, 1, :2]
    score, aligned = score_limbs(paf, starts, ends)
    assert score.shape == (2, 2) and aligned.shape == (2, 2)
    assert score[0, 0] > 0.9 and score[1, 1] > 0.9  # true pairs
    assert aligned[0, 0] == 1.0 and aligned[1, 1] == 1.0
    # wrong pairs only touch the true limbs near their ends and cross empty field in between
    assert abs(score[0, 1]) < 0.4 and abs(score[1, 0]) < 0.4
    assert aligned[0, 1] <= 0.5 and aligned[1, 0] <= 0.5
    reversed_score, _ = score_limbs(paf, ends, starts)
    assert reversed_score[0, 0] < -0.9  # direction matters


def test_score_handles_empty_coincident_and_nan_points():
    paf = encode_pafs(limb(2, 2, 10, 2)[None], (5, 12), ONE_LIMB)
    score, aligned = score_limbs(paf, np.zeros((0, 2)), np.array([[10.0, 2.0]]))
    assert score.shape == (0, 1) and aligned.shape == (0, 1)
    score, aligned = score_limbs(paf, np.array([[2.0, 2.0], [np.nan, np.nan]]), np.array([[2.0, 2.0], [10.0, 2.0]]))
    np.testing.assert_array_equal(score[0, 0], 0.0)  # coincident points: no direction
    assert score[0, 1] > 0.9
    np.testing.assert_array_equal(score[1], [0.0, 0.0])
    np.testing.assert_array_equal(aligned[1], [0.0, 0.0])


def test_score_limb_pairs_batches_like_score_limbs():
    rng = np.random.default_rng(1)
    pafs = rng.normal(size=(2, 3, 2, 10, 14)).astype(np.float32)  # (B, L, 2, H, W)
    a, c = rng.uniform(0, 9, size=(2, 3, 4, 2)), rng.uniform(0, 9, size=(2, 3, 5, 2))
    score, aligned = score_limb_pairs(torch.from_numpy(pafs), torch.from_numpy(a), torch.from_numpy(c), 7)
    assert score.shape == (2, 3, 4, 5)
    for b in range(2):
        for l in range(3):
            s, f = score_limbs(pafs[b, l], a[b, l], c[b, l], num_samples=7)
            np.testing.assert_allclose(score[b, l].numpy(), s, atol=1e-6)
            np.testing.assert_allclose(aligned[b, l].numpy(), f, atol=1e-6)


def test_score_samples_bilinearly():
    paf = np.zeros((2, 4, 6), np.float32)
    paf[0, :, 3] = 1.0  # x-field of 1 in column 3 only
    score, _ = score_limbs(paf, np.array([[2.5, 1.0]]), np.array([[2.5, 3.0]]), num_samples=3)
    assert score[0, 0] == pytest.approx(0.0)  # vertical segment, field is horizontal
    score, _ = score_limbs(paf, np.array([[2.0, 1.0]]), np.array([[4.0, 1.0]]), num_samples=5)
    assert score[0, 0] == pytest.approx((0 + 0.5 + 1 + 0.5 + 0) / 5)  # samples at x = 2, 2.5, 3, 3.5, 4


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        score_limbs(np.zeros((38, 4, 4)), np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"\(N, K, 3\)"):
        encode_pafs(np.zeros((17, 3)), (4, 4))
