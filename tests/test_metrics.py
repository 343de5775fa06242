"""OKS AP (pycocotools) and PCK on hand-made COCO sets: ground truth scores 1.0, shifted keypoints score less."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pipeline.evaluation.metrics import (
    complete_ground_truth,
    evaluate_results,
    match_people,
    oks,
    oks_ap,
    pck,
    pck_coco,
    people_to_results,
    results_to_array,
)
from pipeline.pose.keypoints import NUM_KEYPOINTS, coco_person_category


def make_gt(num_images: int = 4, people: int = 2, seed: int = 0) -> dict:
    """COCO keypoint ground truth: people of ~80x160 px, a few keypoints unlabelled (0, 0, 0)."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        images.append({"id": 10 + i, "file_name": f"{i}.jpg", "width": 320, "height": 240})
        for p in range(people):
            x0, y0 = 20 + 140 * p + rng.uniform(0, 20), 30 + rng.uniform(0, 30)
            kp = np.column_stack([x0 + rng.uniform(0, 80, NUM_KEYPOINTS), y0 + rng.uniform(0, 160, NUM_KEYPOINTS),
                                  np.full(NUM_KEYPOINTS, 2.0)])
            kp[rng.choice(NUM_KEYPOINTS, 2, replace=False)] = 0.0
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + i, "category_id": 1,
                                "keypoints": kp.reshape(-1).round(2).tolist(), "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": [coco_person_category()]}


def gt_as_results(gt: dict, shift: float = 0.0, seed: int = 1) -> list[dict]:
    """Ground truth turned into predictions, keypoints moved by `shift` px in random directions."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in gt["annotations"]:
        kp = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        angle = rng.uniform(0, 2 * np.pi, len(kp))
        kp[:, 0] += shift * np.cos(angle)
        kp[:, 1] += shift * np.sin(angle)
        kp[:, 2] = np.where(kp[:, 2] > 0, 0.9, 0.0)
        kp[kp[:, 2] == 0, :2] = np.nan
        results += people_to_results(ann["image_id"], kp[None], np.array([0.9]))
    return results


def test_ground_truth_scores_perfectly():
    gt = make_gt()
    metrics = evaluate_results(gt, gt_as_results(gt))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["PCK"] == pytest.approx(1.0)


def test_shifted_keypoints_score_less_the_further_they_move():
    gt = make_gt()
    scores = [evaluate_results(gt, gt_as_results(gt, shift)) for shift in (0.0, 4.0, 12.0, 40.0)]
    aps = [s["AP"] for s in scores]
    pcks = [s["PCK"] for s in scores]
    assert aps[0] > aps[1] > aps[2] > aps[3] and aps[3] < 0.2
    assert pcks[0] == 1.0 and pcks[2] == 1.0  # 12 px < 0.2 * ~160 px person size
    assert pcks[3] < 0.1  # 40 px > 0.2 * 160


def test_missing_people_lower_recall_and_pck():
    gt = make_gt()
    results = gt_as_results(gt)[::2]  # every other person not found
    metrics = evaluate_results(gt, results)
    assert metrics["AR"] == pytest.approx(0.5) and metrics["PCK"] == pytest.approx(0.5)


def test_oks_ap_handles_no_results_and_foreign_images():
    gt = make_gt()
    assert oks_ap(gt, [])["AP"] == 0.0
    foreign = gt_as_results(gt)[:1]
    foreign[0]["image_id"] = 999
    with pytest.raises(ValueError, match="not in the ground truth"):
        oks_ap(gt, foreign)


def test_pck_uses_the_reference_size():
    gt = np.zeros((2, NUM_KEYPOINTS, 3))
    gt[..., 2] = 2
    pred = gt.copy()
    pred[..., 2] = 1
    pred[0, :, 0] += 15  # 15 px off: within 0.2 * 100, not within 0.2 * 50
    assert pck(pred, gt, np.array([100.0, 100.0])) == 1.0
    assert pck(pred, gt, np.array([50.0, 100.0])) == 0.5
    pred[1, :4, :2] = np.nan  # missing predictions are misses
    assert pck(pred, gt, np.array([100.0, 100.0])) == pytest.approx(1 - 4 / 34)
    gt[1, :4, 2] = 0  # ... unless the keypoint is not labelled
    assert pck(pred, gt, np.array([100.0, 100.0])) == 1.0
    with pytest.raises(ValueError, match="expected pred and gt"):
        pck(pred[:1], gt, np.array([1.0, 1.0]))


def test_matching_finds_each_person_whatever_the_order():
    gt = complete_ground_truth(make_gt(num_images=1, people=3))
    people = np.array([a["keypoints"] for a in gt["annotations"]]).reshape(3, NUM_KEYPOINTS, 3)
    area = np.array([a["area"] for a in gt["annotations"]])
    sim = oks(people, area, people[[2, 0, 1]])
    assert np.allclose(np.diag(sim[:, [1, 2, 0]]), 1.0) and sim.max(axis=1).min() == pytest.approx(1.0)
    matched = match_people(people, area, people[[2, 0, 1]])
    np.testing.assert_allclose(matched, people)
    unmatched = match_people(people, area, people[:1])
    assert np.isnan(unmatched[1:, :, 0]).all() and (unmatched[1:, :, 2] == 0).all()


def test_results_round_trip_and_gt_completion():
    kp = np.full((1, NUM_KEYPOINTS, 3), np.nan)
    kp[0, 0] = (12.5, 30.25, 0.8)
    results = people_to_results(7, kp, np.array([0.6]))
    assert results[0]["keypoints"][:6] == [12.5, 30.25, 0.8, 0.0, 0.0, 0.0] and results[0]["score"] == 0.6
    back = results_to_array(results)
    np.testing.assert_allclose(back[0, 0], kp[0, 0])
    assert np.isnan(back[0, 1:, :2]).all()
    gt = make_gt(num_images=1, people=1)
    raw = copy.deepcopy(gt)
    done = complete_ground_truth(gt)
    assert gt == raw  # the caller's dict is left alone
    ann = done["annotations"][0]
    assert ann["num_keypoints"] == 15 and ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])
    assert pck_coco(gt, []) == 0.0
