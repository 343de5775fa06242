import numpy as np
import pytest
import torch

from pipeline.pose.grouping import GroupingConfig, _match_greedily, group_people, group_people_batch
from pipeline.pose.heatmaps import encode_heatmaps
from pipeline.pose.keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS, NUM_LIMBS, SKELETON
from pipeline.pose.pafs import encode_pafs

SIZE = (64, 64)  # (H, W) heatmap pixels

# An upright person facing the camera, about 36 heatmap px tall, offsets from the mid-hip region (x, y).
TEMPLATE = np.array(
    [(0, -16), (1.5, -17.5), (-1.5, -17.5), (3, -16.5), (-3, -16.5), (5, -11), (-5, -11), (7, -4), (-7, -4),
     (8, 2), (-8, 2), (3, 2), (-3, 2), (3.5, 10), (-3.5, 10), (4, 18), (-4, 18)],
    np.float32,
)  # (K, 2)


def person(cx: float, cy: float, scale: float = 1.0, hidden: tuple[str, ...] = ()) -> np.ndarray:
    kp = np.ones((NUM_KEYPOINTS, 3), np.float32)
    kp[:, :2] = TEMPLATE * scale + (cx, cy)
    for name in hidden:
        kp[KEYPOINT_INDEX[name]] = 0
    return kp  # (K, 3)


def fields(people: list[np.ndarray], size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    kp = np.stack(people) if people else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
    return encode_heatmaps(kp, size), encode_pafs(kp, size)  # (K, H, W), (2L, H, W)


def assert_found(found: np.ndarray, truth: list[np.ndarray], tol: float = 0.5) -> None:
    """Each true person matches a distinct found person: same visible keypoints, positions within tol px."""
    assert len(found) == len(truth)
    unmatched = list(range(len(found)))
    for t in truth:
        visible = t[:, 2] > 0
        errors = [np.abs(found[i, :, :2] - t[:, :2])[visible].max() for i in unmatched]
        best = unmatched[int(np.argmin(errors))]
        assert min(errors) < tol, f"no found person within {tol} px of {t[:, :2].tolist()}"
        np.testing.assert_array_equal(found[best, :, 2] > 0, visible)
        assert np.isnan(found[best, ~visible, :2]).all() and (found[best, ~visible, 2] == 0).all()
        unmatched.remove(best)


@pytest.mark.parametrize(
    "truth",
    [
        [person(20.3, 31.2), person(44.1, 30.7)],  # apart
        [person(23.3, 32.2), person(41.1, 31.7)],  # side by side: wrists 2 px apart
        [person(26.3, 30.2), person(34.1, 34.7)],  # overlapping: arms across the other's torso
        [person(22.6, 30.0, scale=0.8), person(42.2, 28.4, scale=1.2)],  # different sizes
    ],
)
def test_two_people(truth):
    keypoints, scores = group_people(*fields(truth))
    assert keypoints.shape == (2, NUM_KEYPOINTS, 3) and keypoints.dtype == np.float32
    assert scores.shape == (2,) and (scores > 0.9).all() and scores[0] >= scores[1]
    assert_found(keypoints, truth)


def test_one_person_with_missing_keypoints():
    truth = [person(31.7, 33.2, hidden=("left_wrist", "right_ear", "left_ankle"))]
    keypoints, scores = group_people(*fields(truth))
    assert_found(keypoints, truth, tol=0.05)
    np.testing.assert_allclose(scores, keypoints[0, truth[0][:, 2] > 0, 2].mean(), rtol=1e-6)  # mean peak score


def test_no_people():
    keypoints, scores = group_people(*fields([]))
    assert keypoints.shape == (0, NUM_KEYPOINTS, 3) and scores.shape == (0,)
    heatmaps, _ = fields([person(30, 30)])
    keypoints, _ = group_people(heatmaps, np.zeros((2 * NUM_LIMBS, *SIZE), np.float32))  # peaks but no limbs
    assert len(keypoints) == 0


def test_filters_and_orders_people():
    small = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    small[[KEYPOINT_INDEX["left_knee"], KEYPOINT_INDEX["left_ankle"]]] = [[50, 20, 1], [50, 28, 1]]  # one limb
    truth = [person(18, 30), person(40, 32), small]
    heatmaps, pafs = fields(truth)
    heatmaps[:, :, 30:] *= 0.6  # the right half is fainter: the second person scores lower
    keypoints, scores = group_people(heatmaps, pafs)
    assert_found(keypoints, truth[:2])  # the two-keypoint fragment is below min_keypoints
    assert keypoints[0, 0, 0] < 30 and scores[0] > 0.9 and 0.55 < scores[1] < 0.65
    keypoints, scores = group_people(heatmaps, pafs, GroupingConfig(min_keypoints=2, min_person_score=0.7))
    assert len(keypoints) == 1 and keypoints[0, 0, 0] < 30  # the faint ones are below min_person_score
    keypoints, _ = group_people(heatmaps, pafs, GroupingConfig(min_keypoints=2))
    assert len(keypoints) == 3


def test_batch_matches_per_image_and_accepts_low_precision():
    images = [[], [person(31.2, 30.6)], [person(20.3, 31.2), person(44.1, 30.7)]]
    maps = [fields(people) for people in images]
    heatmaps = torch.from_numpy(np.stack([h for h, _ in maps]))  # (B, K, H, W)
    pafs = torch.from_numpy(np.stack([p for _, p in maps]))  # (B, 2L, H, W)
    batch = group_people_batch(heatmaps, pafs)
    assert len(batch) == 3
    for (keypoints, scores), (h, p) in zip(batch, maps):
        single_keypoints, single_scores = group_people(h, p)
        np.testing.assert_array_equal(keypoints, single_keypoints)
        np.testing.assert_array_equal(scores, single_scores)
    assert [len(k) for k, _ in batch] == [0, 1, 2]
    half = group_people_batch(heatmaps.to(torch.bfloat16), pafs.to(torch.bfloat16))
    assert [len(k) for k, _ in half] == [0, 1, 2]
    assert_found(half[2][0], images[2], tol=0.2)


def test_greedy_matching_uses_each_candidate_once_by_descending_score():
    score = np.array([[0.9, 0.8, 0.3], [0.85, 0.1, 0.2]])
    possible = np.array([[True, True, True], [True, True, False]])
    assert _match_greedily(score, possible) == [(0, 0), (1, 1)]  # (1, 0) and (0, 1) lose their ends to (0, 0)
    assert _match_greedily(score, np.zeros_like(possible)) == []


def test_noise_fields_give_valid_deterministic_output():
    rng = np.random.default_rng(0)
    heatmaps = torch.from_numpy(rng.uniform(0, 1, size=(2, NUM_KEYPOINTS, 24, 32)).astype(np.float32))
    pafs = torch.from_numpy(rng.normal(0, 1, size=(2, 2 * NUM_LIMBS, 24, 32)).astype(np.float32))
    config = GroupingConfig(min_aligned_fraction=0.5, min_keypoints=2, fill_margin=None)
    first, second = group_people_batch(heatmaps, pafs, config), group_people_batch(heatmaps, pafs, config)
    assert sum(len(k) for k, _ in first) > 0  # noise this strong does form (nonsense) people
    for (keypoints, scores), (again_kp, again_sc) in zip(first, second):
        np.testing.assert_array_equal(keypoints, again_kp)
        np.testing.assert_array_equal(scores, again_sc)
        assert (np.diff(scores) <= 0).all() and (scores >= config.min_person_score).all()
        present = keypoints[..., 2] > 0  # (P, K)
        assert (present.sum(axis=1) >= config.min_keypoints).all()
        assert np.isfinite(keypoints[present]).all() and np.isnan(keypoints[~present][:, :2]).all()
        for k in range(NUM_KEYPOINTS):  # a candidate belongs to at most one person
            xy = keypoints[present[:, k], k, :2]
            assert len(np.unique(xy, axis=0)) == len(xy)
    filled = group_people_batch(heatmaps, pafs, GroupingConfig(min_aligned_fraction=0.5, min_keypoints=2))
    for (keypoints, scores), (assembled, same_scores) in zip(filled, first):
        np.testing.assert_array_equal(scores, same_scores)  # filling adds keypoints, never changes a person's score
        kept = assembled[..., 2] > 0
        np.testing.assert_array_equal(keypoints[kept], assembled[kept])
        assert ((keypoints[..., 2] > 0).sum() >= kept.sum()) and np.isfinite(keypoints[keypoints[..., 2] > 0]).all()


def test_missing_keypoints_are_filled_from_the_heatmap_inside_the_persons_box():
    """Where a limb's field is lost (here the left forearm of the first person), the wrist is not joined; filling
    takes it from its heatmap inside that person's box, and never takes the other person's wrist."""
    truth = [person(20.3, 31.2), person(44.1, 30.7)]
    heatmaps, pafs = fields(truth)
    forearm = [i for i, limb in enumerate(SKELETON) if limb == (KEYPOINT_INDEX["left_elbow"],
                                                                 KEYPOINT_INDEX["left_wrist"])][0]
    pafs[2 * forearm:2 * forearm + 2, :, :32] = 0.0
    wrist = KEYPOINT_INDEX["left_wrist"]
    bare, _ = group_people(heatmaps, pafs, GroupingConfig(fill_margin=None))
    filled, _ = group_people(heatmaps, pafs)
    first = int(np.argmin(np.nanmean(filled[:, :, 0], axis=1)))
    assert (bare[..., 2] > 0).sum() == 2 * NUM_KEYPOINTS - 1  # the first person's left wrist is missing
    np.testing.assert_allclose(filled[first, wrist, :2], truth[0][wrist, :2], atol=0.05)
    assert filled[first, wrist, 2] > 0.9
    assert_found(filled, truth)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_on_cuda_matches_cpu():
    h, p = fields([person(20.3, 31.2), person(44.1, 30.7)])
    h, p = torch.from_numpy(h)[None], torch.from_numpy(p)[None]
    (cpu_kp, cpu_sc), (gpu_kp, gpu_sc) = group_people_batch(h, p)[0], group_people_batch(h.cuda(), p.cuda())[0]
    np.testing.assert_allclose(gpu_kp, cpu_kp, atol=1e-4)
    np.testing.assert_allclose(gpu_sc, cpu_sc, atol=1e-4)


def test_rejects_mismatched_fields():
    h, p = fields([])
    with pytest.raises(ValueError, match="pafs"):
        group_people(h, p[:-2])
    with pytest.raises(ValueError, match="group_people_batch"):
        group_people(h[None], p[None])
    with pytest.raises(ValueError, match="min_aligned_fraction"):
        GroupingConfig(min_aligned_fraction=1.5)
