"""Tracker behaviour on hand-built trajectories: crossings, occlusion gaps, entries and exits, chunked runs,
One Euro smoothing, and IDF1 on noisy ground-truth-like detections."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.mot import evaluate_tracks
from pipeline.pose.keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS
from pipeline.pose.tracking import (
    UNTRACKED,
    Tracker,
    TrackerConfig,
    box_from_keypoints,
    confirm_tracks,
    oks_matrix,
    person_scores,
    track_video,
)

FPS = 10.0  # sampled frames per second of the simulated videos

# A standing person facing the camera, in units of body height, origin at the hip centre (x right, y down);
# the person's left side is on the image's right.
POSE = np.array([
    [0.0, -0.42], [0.02, -0.44], [-0.02, -0.44], [0.045, -0.43], [-0.045, -0.43],  # nose, eyes, ears
    [0.11, -0.30], [-0.11, -0.30], [0.14, -0.15], [-0.14, -0.15], [0.15, -0.02], [-0.15, -0.02],  # arms
    [0.07, 0.0], [-0.07, 0.0], [0.075, 0.23], [-0.075, 0.23], [0.08, 0.46], [-0.08, 0.46],  # legs
])
LEFT_SWING = [KEYPOINT_INDEX[n] for n in ("left_wrist", "right_ankle")]  # limbs that swing together when walking
RIGHT_SWING = [KEYPOINT_INDEX[n] for n in ("right_wrist", "left_ankle")]


def pose(hip_xy: np.ndarray, height: float, phase: float = 0.0) -> np.ndarray:
    """(K, 3) keypoints [x, y, 1] of a walker whose hip centre is at hip_xy."""
    xy = POSE.copy()  # (K, 2)
    xy[LEFT_SWING, 0] += 0.06 * np.sin(phase)
    xy[RIGHT_SWING, 0] -= 0.06 * np.sin(phase)
    return np.concatenate([hip_xy + xy * height, np.ones((NUM_KEYPOINTS, 1))], axis=1)


def frames_of(people_per_frame: list[list[np.ndarray]]) -> list[tuple[int, float, np.ndarray]]:
    """Per frame lists of (K, 3) people -> tracker input (frame_index, timestamp_s, (P, K, 3))."""
    return [(t, t / FPS, np.array(people, np.float32).reshape(len(people), NUM_KEYPOINTS, 3))
            for t, people in enumerate(people_per_frame)]


def ids_of(results) -> list[list[int]]:
    return [ids.tolist() for ids, _ in results]


def crossing_video(hidden: range = range(0, 0)) -> list[list[np.ndarray]]:
    """Two walkers crossing at the same depth: person 0 walks right, person 1 walks left; in the frames `hidden`
    person 1 is behind person 0 and not detected. Person order in each frame: 0 then 1."""
    frames = []
    for t in range(40):
        a = pose(np.array([200.0 + 8 * t, 300.0]), 200, 0.5 * t)
        b = pose(np.array([520.0 - 8 * t, 304.0]), 195, 0.5 * t + 1)
        frames.append([a] if t in hidden else [a, b])
    return frames


def test_box_from_keypoints_ignores_missing():
    kp = np.array([[[10, 20, 0.9], [30, 5, 0.5], [np.nan, np.nan, 0.0], [100, 100, 0.0]]], np.float32)
    np.testing.assert_allclose(box_from_keypoints(kp), [[10, 5, 30, 20]])
    assert np.isnan(box_from_keypoints(np.zeros((1, 4, 3)))).all()  # no keypoint scores > 0


def test_oks_is_one_on_itself_and_falls_with_distance():
    a = pose(np.array([300.0, 300.0]), 200)[None]  # (1, K, 3)
    near, far = a.copy(), a.copy()
    near[..., :2] += 3.0
    far[..., :2] += 60.0
    oks = oks_matrix(a, np.concatenate([a, near, far]))  # (1, 3)
    assert oks[0, 0] == pytest.approx(1.0)
    assert 0.5 < oks[0, 1] < 1.0 and oks[0, 2] < 0.1
    assert oks_matrix(a, np.zeros((0, NUM_KEYPOINTS, 3))).shape == (1, 0)


def test_crossing_keeps_ids():
    results = track_video(frames_of(crossing_video()))
    assert all(ids == [0, 1] for ids in ids_of(results))


def test_crossing_with_occlusion_keeps_ids():
    results = track_video(frames_of(crossing_video(hidden=range(17, 24))))
    for t, ids in enumerate(ids_of(results)):
        assert ids == ([0] if t in range(17, 24) else [0, 1]), f"frame {t}"


def test_motion_prediction_needed_for_occluded_crossing():
    """Without the constant-velocity step the hidden walker comes back too far from where it vanished."""
    frames = frames_of(crossing_video(hidden=range(15, 26)))
    with_motion = ids_of(track_video(frames, TrackerConfig(motion_prediction=True)))
    without = ids_of(track_video(frames, TrackerConfig(motion_prediction=False)))
    assert with_motion[-1] == [0, 1]
    assert without[-1] != [0, 1]


@pytest.mark.parametrize("gap, same_id", [(15, True), (16, False)])
def test_gap_up_to_max_gap_keeps_id(gap, same_id):
    people = [[pose(np.array([300.0, 300.0]), 200)] for _ in range(5)] + [[] for _ in range(gap)] \
        + [[pose(np.array([300.0, 300.0]), 200)] for _ in range(3)]
    ids = ids_of(track_video(frames_of(people), TrackerConfig(max_gap=15)))
    assert ids[:5] == [[0]] * 5 and ids[5:5 + gap] == [[]] * gap
    assert ids[-3:] == ([[0]] * 3 if same_id else [[1]] * 3)


def test_people_entering_and_leaving_get_ids_in_order_of_creation():
    people = []
    for t in range(30):
        frame = [pose(np.array([100.0 + 5 * t, 300.0]), 180)] if t < 20 else []  # leaves at 20
        if t >= 5:  # enters at 5, listed first: ids still follow creation order
            frame.insert(0, pose(np.array([700.0 - 5 * t, 310.0]), 190))
        if t >= 25:
            frame.append(pose(np.array([400.0, 100.0 + t]), 150))
        people.append(frame)
    ids = ids_of(track_video(frames_of(people)))
    assert ids[0] == [0] and ids[5] == [1, 0] and ids[19] == [1, 0] and ids[20] == [1] and ids[29] == [1, 2]


def split_walker_video() -> list[list[np.ndarray]]:
    """A walker whose detection splits in frame 5, as where two people cross: the upper body 10 px ahead (the track
    takes it, the nearer) and the legs 25 px ahead (a new, tentative track, which in frame 6 predicts the walker
    better on its few keypoints than the whole walker's track does). Frame 6 shows the whole walker again."""
    walker = [pose(np.array([200.0 + 8 * t, 300.0]), 200) for t in range(5)]
    upper, legs = pose(np.array([250.0, 300.0]), 200), pose(np.array([265.0, 300.0]), 200)
    upper[11:] = [np.nan, np.nan, 0.0]
    legs[:11] = [np.nan, np.nan, 0.0]
    return [[p] for p in walker] + [[upper, legs], [pose(np.array([273.0, 300.0]), 200)]]


def test_confirmed_track_keeps_its_person_from_a_fragments_tentative_track():
    frames = frames_of(split_walker_video())
    assert ids_of(track_video(frames))[5:] == [[0, UNTRACKED], [0]]  # the fragment's track never got confirmed
    # with every track confirmed at once, the fragment's track (legs exactly in place) takes the walker from track 0
    assert ids_of(track_video(frames, TrackerConfig(min_hits=1)))[5:] == [[0, 1], [1]]
    with pytest.raises(ValueError, match="min_hits"):
        TrackerConfig(min_hits=0)


def test_confirm_tracks_drops_short_tracks_and_renumbers_in_creation_order():
    online = [np.array([0]), np.array([0, 1]), np.array([2, 0, 3]), np.array([3, 2]), np.array([2, 3])]
    final = confirm_tracks(online, min_hits=3)  # 0 and 2 and 3 are seen 3 times, 1 once
    assert [f.tolist() for f in final] == [[0], [0, UNTRACKED], [1, 0, 2], [2, 1], [1, 2]]
    assert [f.tolist() for f in confirm_tracks(online, min_hits=1)] == [f.tolist() for f in online[:1]] + \
        [[0, 1], [2, 0, 3], [3, 2], [2, 3]]
    assert confirm_tracks([], 3) == [] and confirm_tracks([np.zeros(0, np.int64)], 3)[0].shape == (0,)


def test_confirm_tracks_drops_tracks_of_weak_people():
    online = [np.array([0, 1]), np.array([0, 1]), np.array([1, 0])]
    scores = [np.array([0.8, 0.3]), np.array([0.9, 0.35]), np.array([0.4, 0.7])]  # track 1 averages 0.35
    assert [f.tolist() for f in confirm_tracks(online, 3, scores, min_track_score=0.5)] == \
        [[0, UNTRACKED], [0, UNTRACKED], [UNTRACKED, 0]]
    assert [f.tolist() for f in confirm_tracks(online, 3, scores, min_track_score=0.0)] == [[0, 1], [0, 1], [1, 0]]
    keypoints = np.array([[[1, 2, 0.8], [3, 4, 0.4], [np.nan, np.nan, 0.0]], [[0, 0, 0.0]] * 3])  # (2, 3, 3)
    np.testing.assert_allclose(person_scores(keypoints), [0.6, 0.0])


def test_track_video_untracks_a_steady_weak_detection():
    weak = pose(np.array([600.0, 300.0]), 200)
    weak[:, 2] = 0.3  # something the network half-sees in every frame, far from the person
    frames = frames_of([[pose(np.array([200.0 + 5 * t, 300.0]), 200), weak] for t in range(6)])
    assert ids_of(track_video(frames, TrackerConfig())) == [[0, UNTRACKED]] * 6
    assert ids_of(track_video(frames, TrackerConfig(min_track_score=0))) == [[0, 1]] * 6
    with pytest.raises(ValueError, match="min_track_score"):
        TrackerConfig(min_track_score=1.5)


def test_dissimilar_people_do_not_match():
    people = [[pose(np.array([100.0, 300.0]), 200)], [pose(np.array([800.0, 300.0]), 200)]]
    assert ids_of(track_video(frames_of(people), TrackerConfig(min_hits=1))) == [[0], [1]]


def test_empty_frames_and_input_checks():
    tracker = Tracker(first_track_id=7)
    ids, kp = tracker.update(0, 0.0, np.zeros((0, NUM_KEYPOINTS, 3), np.float32))
    assert ids.shape == (0,) and ids.dtype == np.int64 and kp.shape == (0, NUM_KEYPOINTS, 3)
    ids, _ = tracker.update(1, 0.1, pose(np.array([300.0, 300.0]), 200)[None])
    assert ids.tolist() == [7]
    with pytest.raises(ValueError, match="increasing frame_index"):
        tracker.update(1, 0.2, np.zeros((0, NUM_KEYPOINTS, 3)))
    with pytest.raises(ValueError, match=r"\(P, K, 3\)"):
        tracker.update(2, 0.2, np.zeros((NUM_KEYPOINTS, 3)))


def test_person_without_keypoints_gets_a_one_frame_id():
    weak = pose(np.array([300.0, 300.0]), 200)
    weak[:, 2] = 0.05  # all below min_keypoint_score
    ids = ids_of(track_video(frames_of([[weak], [weak], [pose(np.array([300.0, 300.0]), 200)]]),
                             TrackerConfig(min_hits=1, min_track_score=0)))
    assert ids == [[0], [1], [2]]


def noisy_walkers(seed: int, num_frames: int = 200, num_people: int = 6, noise_px: float = 3.0,
                  dropout: float = 0.03, width: int = 960) -> tuple[dict, list]:
    """Ground-truth-like detections of people walking across a street, seen from the side.

    People of body height 110-220 px (closer = taller = lower in the image) walk left or right at 3-9 px per
    sampled frame and cross each other. Keypoints inside the box of a closer person are hidden; a person with
    fewer than 5 keypoints left is not detected (the occlusion gaps). Each visible person also drops out for 1-3
    frames with probability `dropout` per frame, keypoints get Gaussian noise of `noise_px`, and the person order
    is shuffled in every frame. Some occlusions outlast max_gap (a slow walker behind a closer one): there a new
    id is the tracker's contract, and IDF1 pays for it.
    Returns:
        gt: frame_index -> (true ids, keypoints) of the detections: the detections ARE the ground truth, so the
            evaluation measures the tracker alone; frames: tracker input (frame_index, timestamp_s, (P, K, 3)).
    """
    rng = np.random.default_rng(seed)
    height = rng.uniform(110, 220, num_people)
    direction = rng.choice([-1.0, 1.0], num_people)
    speed = rng.uniform(3, 9, num_people) * direction
    start = np.where(rng.random(num_people) < 0.5, 0, rng.integers(0, num_frames // 2, num_people))
    outside = np.where(direction > 0, -0.25 * height, width + 0.25 * height)  # late starters walk in from outside
    x0 = np.where(start == 0, rng.uniform(0.1 * width, 0.9 * width, num_people), outside)
    hip_y = 130 + 1.1 * height + rng.uniform(-10, 10, num_people)
    dropout_left = np.zeros(num_people, int)
    gt, frames = {}, []
    for t in range(num_frames):
        hip_x = x0 + speed * (t - start)
        present = [i for i in range(num_people)
                   if t >= start[i] and -0.3 * height[i] < hip_x[i] < width + 0.3 * height[i]]
        clean = {i: pose(np.array([hip_x[i], hip_y[i] + 2 * np.sin(0.3 * t + i)]), height[i], 0.6 * t + i)
                 for i in present}
        for i in present:
            clean[i][(clean[i][:, 0] < 0) | (clean[i][:, 0] >= width)] = [np.nan, np.nan, 0.0]
        ids, kept = [], []
        for i in sorted(present, key=lambda i: -height[i]):  # closest first
            visible = clean[i][:, 2] > 0
            for j in kept:
                box = box_from_keypoints(clean[j][None])[0] + [-5, -15, 5, 5]  # a body is wider than its joints
                inside = (clean[i][:, 0] > box[0]) & (clean[i][:, 0] < box[2]) & \
                         (clean[i][:, 1] > box[1]) & (clean[i][:, 1] < box[3])
                visible &= ~inside
            clean[i][~visible] = [np.nan, np.nan, 0.0]
            dropout_left[i] = max(dropout_left[i] - 1, 0)
            if dropout_left[i] == 0 and rng.random() < dropout:
                dropout_left[i] = rng.integers(1, 4)
            if visible.sum() >= 5 and dropout_left[i] == 0:
                ids.append(i)
            kept.append(i)
        order = rng.permutation(len(ids))
        ids = np.array(ids, np.int64)[order]
        gt_kp = np.array([clean[i] for i in ids]).reshape(len(ids), NUM_KEYPOINTS, 3)  # (P, K, 3)
        det = gt_kp.copy()
        det[..., :2] += rng.normal(0, noise_px, det[..., :2].shape)
        det[..., 2] = np.where(det[..., 2] > 0, rng.uniform(0.3, 1.0, det[..., 2].shape), 0.0)
        det = det.astype(np.float32)
        gt[t] = (ids, det)
        frames.append((t, t / FPS, det))
    return gt, frames


def track_and_evaluate(seed: int, config: TrackerConfig = TrackerConfig()) -> dict:
    gt, frames = noisy_walkers(seed)
    results = track_video(frames, config)
    return evaluate_tracks(gt, {t: (ids, kp) for (t, _, _), (ids, kp) in zip(frames, results)})


@pytest.mark.parametrize("seed", range(8))
def test_idf1_on_noisy_ground_truth_detections(seed):
    metrics = track_and_evaluate(seed)
    assert metrics["precision"] == 1.0 and metrics["recall"] >= 0.99  # untracked: only people seen in < 3 frames
    everyone = track_and_evaluate(seed, TrackerConfig(min_hits=1))
    assert everyone["precision"] == 1.0 and everyone["recall"] == 1.0  # min_hits 1: every person gets a track id
    assert metrics["idf1"] >= 0.98, metrics


def test_motion_prediction_improves_idf1():
    """The constant-velocity step is kept because it pays: IDF1 over 4 videos with and without it."""
    with_motion = np.mean([track_and_evaluate(seed)["idf1"] for seed in range(4)])
    without = np.mean([track_and_evaluate(seed, TrackerConfig(motion_prediction=False))["idf1"] for seed in range(4)])
    assert with_motion >= 0.98 and without < with_motion - 0.1, (with_motion, without)


def test_timestamps_must_increase():
    tracker = Tracker(TrackerConfig(smoothing=True))
    tracker.update(0, 0.0, pose(np.array([300.0, 300.0]), 200)[None])
    with pytest.raises(ValueError, match="strictly increasing timestamps"):
        tracker.update(1, 0.0, pose(np.array([300.0, 300.0]), 200)[None])


def test_same_input_gives_same_ids():
    _, frames = noisy_walkers(seed=5)
    first, second = track_video(frames), track_video(frames)
    assert ids_of(first) == ids_of(second)
    assert max(max(ids, default=-1) for ids in ids_of(first)) + 1 == len({i for ids in ids_of(first) for i in ids})


def test_smoothing_reduces_jitter_and_follows_motion():
    """3 px noise at 10 fps, default One Euro settings: a static person is smoothed (error 0.65x the raw one),
    a walker at 60 px/s is followed with < 2 px lag and no more error than the raw detections."""
    rng = np.random.default_rng(0)
    num_frames = 100
    config = TrackerConfig(smoothing=True)
    for speed, max_ratio in ((0.0, 0.75), (6.0, 1.0)):
        clean = np.array([[pose(np.array([100.0 + speed * t, 300.0]), 200)] for t in range(num_frames)])  # (T,1,K,3)
        noisy = clean.copy()
        noisy[..., :2] += rng.normal(0, 3.0, noisy[..., :2].shape)
        frames = [(t, t / FPS, noisy[t]) for t in range(num_frames)]
        out = np.array([kp for _, kp in track_video(frames, config)])  # (T, 1, K, 3)
        raw_err = np.abs(noisy[20:, ..., :2] - clean[20:, ..., :2]).mean()
        smooth_err = np.abs(out[20:, ..., :2] - clean[20:, ..., :2]).mean()
        assert smooth_err < max_ratio * raw_err, (speed, smooth_err, raw_err)
        assert abs((out - clean)[20:, ..., 0].mean()) < 3.0  # lag behind the walker, px
        np.testing.assert_array_equal(out[..., 2], noisy[..., 2])  # scores pass through
    off = track_video(frames, TrackerConfig(smoothing=False))
    np.testing.assert_array_equal(np.array([kp for _, kp in off]), noisy)  # smoothing off: keypoints unchanged
