"""Tracking evaluation: metrics on hand-built tracks, ground-truth loading from the synthetic generator's JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.evaluation.mot import evaluate_tracks, load_ground_truth
from pipeline.pose.keypoints import NUM_KEYPOINTS
from pipeline.pose.tracking import track_video

STANDING = np.array([  # a person facing the camera, body height 1, hip centre at the origin
    [0.0, -0.42], [0.02, -0.44], [-0.02, -0.44], [0.045, -0.43], [-0.045, -0.43],
    [0.11, -0.30], [-0.11, -0.30], [0.14, -0.15], [-0.14, -0.15], [0.15, -0.02], [-0.15, -0.02],
    [0.07, 0.0], [-0.07, 0.0], [0.075, 0.23], [-0.075, 0.23], [0.08, 0.46], [-0.08, 0.46],
])


def person(x: float, y: float = 300.0, height: float = 200.0) -> np.ndarray:
    return np.concatenate([[x, y] + STANDING * height, np.full((NUM_KEYPOINTS, 1), 2.0)], axis=1)  # (K, 3)


def two_walkers(num_frames: int = 20) -> dict:
    """Person 10 walks right from x=100, person 20 walks left from x=700; they never overlap."""
    return {t: (np.array([10, 20]), np.stack([person(100 + 5 * t), person(700 - 5 * t)])) for t in range(num_frames)}


def test_ground_truth_against_itself_is_perfect():
    gt = two_walkers()
    for distance in ("oks", "iou"):
        m = evaluate_tracks(gt, gt, distance=distance)
        assert m["mota"] == 1.0 and m["idf1"] == 1.0 and m["id_switches"] == 0
        assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["num_frames"] == 20 and m["matches"] == 40


def test_prediction_ids_need_not_equal_ground_truth_ids():
    gt = two_walkers()
    pred = {t: (np.array([0, 1]), kp) for t, (_, kp) in gt.items()}
    assert evaluate_tracks(gt, pred)["idf1"] == 1.0


def test_swapped_ids_cost_switches():
    gt = two_walkers()
    pred = {t: (ids[::-1] if t >= 10 else ids, kp) for t, (ids, kp) in gt.items()}  # ids swap half way
    m = evaluate_tracks(gt, pred)
    assert m["id_switches"] == 2
    assert m["mota"] == pytest.approx(1 - 2 / 40)  # two switches among 40 ground-truth people
    assert m["idf1"] == pytest.approx(0.5)  # each predicted id is right for half of its frames


def test_misses_and_false_positives():
    gt = two_walkers()
    pred = {t: (ids[:1], kp[:1]) for t, (ids, kp) in gt.items()}  # person 20 never found
    pred[3] = (np.array([10, 99]), np.stack([gt[3][1][0], person(400, 100)]))  # a phantom in frame 3
    m = evaluate_tracks(gt, pred)
    assert m["misses"] == 20 and m["false_positives"] == 1 and m["recall"] == 0.5
    assert m["precision"] == pytest.approx(20 / 21)


def test_far_predictions_do_not_match():
    gt = two_walkers()
    pred = {t: (ids, kp + [60.0, 0.0, 0.0]) for t, (ids, kp) in gt.items()}  # 60 px off: OKS < 0.5
    m = evaluate_tracks(gt, pred)
    assert m["matches"] == 0 and m["misses"] == 40 and m["false_positives"] == 40


def test_frames_missing_on_one_side_count_as_empty():
    gt = two_walkers(10)
    pred = {t: gt[t] for t in range(5)} | {12: gt[0]}
    m = evaluate_tracks(gt, pred)
    assert m["num_frames"] == 11 and m["misses"] == 10 and m["false_positives"] == 2


def test_unlabelled_ground_truth_and_untracked_predictions_are_left_out():
    gt = two_walkers(5)
    unlabelled = np.full((NUM_KEYPOINTS, 3), [np.nan, np.nan, 0.0])
    gt_with_hidden = {t: (np.append(ids, 30), np.concatenate([kp, unlabelled[None]])) for t, (ids, kp) in gt.items()}
    extra = np.stack([person(400, 100), person(500, 100)])  # two untracked people per frame (track_id -1)
    pred = {t: (np.append(ids, [-1, -1]), np.concatenate([kp, extra])) for t, (ids, kp) in gt.items()}
    assert evaluate_tracks(gt_with_hidden, pred)["idf1"] == 1.0


def test_input_errors():
    gt = two_walkers(2)
    with pytest.raises(ValueError, match="distance"):
        evaluate_tracks(gt, gt, distance="l2")
    with pytest.raises(ValueError, match="unique"):
        evaluate_tracks(gt, {0: (np.array([1, 1]), gt[0][1])})
    with pytest.raises(ValueError, match=r"\(P, 17, 3\)"):
        evaluate_tracks(gt, {0: (np.array([1]), np.zeros((1, 5, 3)))})


def ground_truth_json() -> dict:
    hidden_wrist = person(300).copy()
    hidden_wrist[9] = 0.0  # COCO: not labelled -> 0, 0, 0
    return {
        "video": "clip.mp4", "fps": 10.0, "width": 640, "height": 480, "num_frames": 2,
        "frames": [
            {"frame_index": 0, "timestamp_s": 0.0, "people": [
                {"track_id": 4, "keypoints": hidden_wrist.reshape(-1).tolist(), "bbox": [0, 0, 1, 1]},
                {"track_id": 7, "keypoints": person(100).reshape(-1).tolist(), "bbox": [0, 0, 1, 1]}]},
            {"frame_index": 1, "timestamp_s": 0.1, "people": []},
        ],
    }


def test_load_ground_truth_from_dict_and_file(tmp_path):
    path = tmp_path / "clip.json"
    path.write_text(json.dumps(ground_truth_json()))
    for source in (ground_truth_json(), path, str(path)):
        gt = load_ground_truth(source)
        assert sorted(gt) == [0, 1]
        ids, kp = gt[0]
        assert ids.tolist() == [4, 7] and ids.dtype == np.int64 and kp.shape == (2, NUM_KEYPOINTS, 3)
        assert np.isnan(kp[0, 9, :2]).all() and kp[0, 9, 2] == 0  # unlabelled -> NaN, score 0
        np.testing.assert_allclose(kp[1], person(100), rtol=1e-6)
        assert gt[1][0].shape == (0,) and gt[1][1].shape == (0, NUM_KEYPOINTS, 3)


def test_load_ground_truth_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_ground_truth(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="frames"):
        load_ground_truth({"video": "x"})
    bad = ground_truth_json()
    bad["frames"][0]["people"][0]["keypoints"] = [1.0, 2.0]
    with pytest.raises(ValueError, match=r"\[x, y, v\] \* K"):
        load_ground_truth(bad)


def test_tracker_on_generator_ground_truth(tmp_path):
    """The synthetic generator's sidecar loads, and the tracker fed its keypoints recovers the identities."""
    videos = pytest.importorskip("pipeline.synthetic.videos")
    gt_path = videos.write_video(tmp_path / "cross.mp4", seed=3, num_frames=30, scenario="cross", num_people=2,
                                 size=(160, 120), supersample=1)
    gt = load_ground_truth(gt_path)
    meta = json.loads(gt_path.read_text())
    assert sorted(gt) == list(range(meta["num_frames"]))
    assert evaluate_tracks(gt, gt)["idf1"] == 1.0
    frames = [(t, t / meta["fps"], kp) for t, (_, kp) in sorted(gt.items())]
    pred = {t: result for (t, _, _), result in zip(frames, track_video(frames))}
    assert evaluate_tracks(gt, pred)["idf1"] >= 0.95
