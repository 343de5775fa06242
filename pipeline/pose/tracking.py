"""Multi-person tracking: link the people of consecutive sampled frames of ONE video into tracks.

Shape letters: P = people in the current frame, Q = people of another set, T = live tracks,
K = keypoints (17, COCO order, see pipeline/pose/keypoints.py).
Keypoint arrays are (P, K, 3) [x, y, score] in image pixels; a missing keypoint is x = y = NaN, score 0.

A track remembers where each of its keypoints was last seen (keypoints hidden now move along with the body) and
the person's velocity. Each frame every live track is predicted forward by a constant-velocity step, and people
are assigned to tracks with the Hungarian algorithm (scipy's linear_sum_assignment) on cost = 1 - similarity,
first to the confirmed tracks (matched in `min_hits` frames or more), then the people left to the tentative ones:

    similarity = oks_weight * OKS + (1 - oks_weight) * box IoU - gap_penalty * missed     (<= 1)

OKS and IoU are taken over the keypoints (score > min_keypoint_score) found in both the prediction and the
person, so a half-hidden person still matches; OKS is COCO's, scaled by the larger keypoint box area of the pair,
with a tolerance widened by `keypoint_noise_px` (+ `gap_noise_px` per missed frame); `missed` counts the frames
the track went unmatched. Pairs below `min_similarity` never match; unmatched people start new tracks (ids in order
of creation, ties by person order); a track unmatched for more than `max_gap` sampled frames ends.
The pipeline tracks each video whole, in frame order (`track_video`). Once the whole video is tracked,
`confirm_tracks` gives the final ids: tracks matched in fewer than `min_hits` frames, or whose people score below `min_track_score` on average,
become UNTRACKED (-1), the rest are renumbered 0, 1, 2...
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.pose.keypoints import OKS_SIGMAS

logger = logging.getLogger(__name__)

UNTRACKED = -1  # final track_id of a person whose track was never confirmed (seen in fewer than min_hits frames)
_FORBIDDEN_COST = 1.0  # cost of pairs below min_similarity, as if similarity 0: the assignment maximises the summed
# similarity of allowed pairs (a huge cost would instead maximise their number), forbidden pairs are dropped after
_VELOCITY_WEIGHT = 0.3  # weight of the newest displacement in a track's velocity (exponential average):
# lower averages out keypoint noise (a 5-keypoint partial view moves the median by ~2 px), higher follows turns


@dataclass(frozen=True)
class TrackerConfig:
    max_gap: int = 15  # sampled frames a track survives unmatched (occlusion), then it ends; ~1 s at 15 sampled fps
    min_similarity: float = 0.2  # similarity (see module docstring) below which a pair is never matched; a walker
    # between two frames keeps ~0.6-0.9, a stranger next to him < 0.1 (0.1 or 0.3 track worse, see tests)
    oks_weight: float = 0.7  # OKS separates overlapping people, the IoU term still scores boxes whose poses changed
    min_keypoint_score: float = 0.1  # keypoints at or below this are ignored for matching (boxes and OKS)
    keypoint_noise_px: float = 4.0  # detection noise, px, added to OKS's tolerance (which is ~3 px on the face
    # of a 110 px tall person, too strict to follow small people from frame to frame)
    gap_noise_px: float = 2.0  # px per missed frame added to that tolerance: a constant-velocity guess drifts
    gap_penalty: float = 0.02  # similarity taken off per missed frame: of two about equally similar tracks, the one
    # seen last wins (a person walking past the spot where another is hidden keeps its id), and a track lost for
    # 15 frames needs similarity >= 0.5 to come back
    motion_prediction: bool = True  # shift a track by its constant velocity before matching (helps crossings)
    min_hits: int = 3  # a track is confirmed once matched in this many frames; people go to confirmed tracks first,
    # and only those left over to tentative ones, so the young track of a fragment (a few keypoints split off a
    # person where two cross) cannot take that person from the track that followed it (IDF1 0.78 -> 0.88 on
    # 8 tuning crossing videos); people of tracks never confirmed get track_id UNTRACKED (-1) in the output
    # (IDF1 -> 0.89, MOTA 0.75 -> 0.80 there); 1 = every track is confirmed at once, one assignment for all
    min_track_score: float = 0.5  # a confirmed track whose people's mean person score is below this is untracked
    # too: on 28 crossing videos the default checkpoint's real tracks scored 0.70-0.90, the false ones it followed
    # through a background pattern 0.30-0.36 (tuning set IDF1 0.884 -> 0.903); 0 keeps every confirmed track
    smoothing: bool = False  # One Euro filter on the keypoints of tracked people (output only, ids do not change)
    smoothing_min_cutoff: float = 1.0  # Hz; lower = smoother static keypoints, more lag at slow motion
    smoothing_beta: float = 0.05  # Hz per (px/s) of keypoint speed; higher = less lag on fast motion
    smoothing_d_cutoff: float = 1.0  # Hz; low-pass of the speed estimate that drives the adaptive cutoff

    def __post_init__(self) -> None:
        if self.min_hits < 1:
            raise ValueError(f"expected min_hits >= 1 (1: every track confirmed at once), got {self.min_hits}")
        if not 0 <= self.min_track_score <= 1:
            raise ValueError(f"expected min_track_score in [0, 1] (a mean person score), got {self.min_track_score}")
        if self.max_gap < 0:
            raise ValueError(f"expected max_gap >= 0 sampled frames, got {self.max_gap}")


def _valid(keypoints: np.ndarray, min_score: float = 0.0) -> np.ndarray:
    """(..., K) True where a keypoint has finite x, y and score > min_score."""
    return (keypoints[..., 2] > min_score) & np.isfinite(keypoints[..., 0]) & np.isfinite(keypoints[..., 1])


def _check_keypoints(keypoints: np.ndarray, name: str = "keypoints") -> np.ndarray:
    keypoints = np.asarray(keypoints)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"expected {name} of shape (P, K, 3) [x, y, score], got {keypoints.shape}; "
                         f"pass np.zeros((0, K, 3)) for a frame without people")
    return keypoints


def box_from_keypoints(keypoints: np.ndarray, min_score: float = 0.0) -> np.ndarray:
    """Box around the keypoints of each person that score above `min_score`.

    Args:
        keypoints: (P, K, 3) [x, y, score].
    Returns:
        (P, 4) float64 [x0, y0, x1, y1]; NaN for a person without such keypoints.
    """
    kp = _check_keypoints(keypoints).astype(np.float64)
    valid = _valid(kp, min_score)[..., None]  # (P, K, 1)
    lo = np.min(np.where(valid, kp[..., :2], np.inf), axis=1)  # (P, 2)
    hi = np.max(np.where(valid, kp[..., :2], -np.inf), axis=1)  # (P, 2)
    boxes = np.concatenate([lo, hi], axis=1)  # (P, 4)
    boxes[~valid[..., 0].any(axis=1)] = np.nan
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of (P, 4) and (Q, 4) [x0, y0, x1, y1] boxes -> (P, Q); 0 where a box is NaN or empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])  # (P, Q, 2)
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (P, Q, 2)
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)  # (P, Q)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)  # (P,)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)  # (Q,)
    union = area_a[:, None] + area_b[None, :] - inter  # (P, Q)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return np.where(np.isfinite(iou) & (union > 0), iou, 0.0)


def oks_matrix(a: np.ndarray, b: np.ndarray, sigmas: np.ndarray = OKS_SIGMAS) -> np.ndarray:
    """COCO object keypoint similarity of every person in `a` against every person in `b`.

    `a` is the reference, as ground truth is in COCO: its keypoint box area is the scale s^2, and the mean runs
    over its keypoints with score > 0; a keypoint missing in `b` contributes 0. Not symmetric.

    Args:
        a: (P, K, 3), b: (Q, K, 3) [x, y, score]; sigmas: (K,) per-keypoint falloff.
    Returns:
        (P, Q) float64 in [0, 1]; 0 for a reference person without keypoints.
    """
    a = _check_keypoints(a, "a").astype(np.float64)
    b = _check_keypoints(b, "b").astype(np.float64)
    sigmas = np.asarray(sigmas, np.float64)
    if a.shape[1] != b.shape[1] or a.shape[1] != len(sigmas):
        raise ValueError(f"expected the same K in a {a.shape}, b {b.shape} and sigmas ({len(sigmas)},)")
    valid_a, valid_b = _valid(a), _valid(b)  # (P, K), (Q, K)
    box = box_from_keypoints(a)  # (P, 4)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])  # (P,)
    d2 = np.sum((a[:, None, :, :2] - b[None, :, :, :2]) ** 2, axis=-1)  # (P, Q, K), NaN where either is missing
    var = (2.0 * sigmas) ** 2  # (K,)
    with np.errstate(invalid="ignore"):
        e = d2 / (2.0 * var * (area[:, None, None] + np.spacing(1)))  # (P, Q, K)
    both = valid_a[:, None, :] & valid_b[None, :, :]  # (P, Q, K)
    per_kp = np.where(both, np.exp(-np.where(both, e, 0.0)), 0.0)  # (P, Q, K)
    count = valid_a.sum(axis=1)  # (P,)
    return per_kp.sum(axis=-1) / np.maximum(count, 1)[:, None]


def _box_area(keypoints: np.ndarray) -> np.ndarray:
    """(P,) area of the keypoint boxes of (P, K, 3) keypoints, px^2; 0 without keypoints."""
    box = box_from_keypoints(keypoints)  # (P, 4)
    return np.nan_to_num((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))


def similarity_matrix(a: np.ndarray, b: np.ndarray, oks_weight: float,
                      noise_px: float | np.ndarray = 0.0) -> np.ndarray:
    """Tracking similarity of (P, K, 3) `a` (tracks) and (Q, K, 3) `b` (people) -> (P, Q) in [0, 1].

    oks_weight * OKS + (1 - oks_weight) * IoU, both over the keypoints found in both people of a pair, so that a
    person half hidden behind another (or half out of the image) still matches its track:
    - OKS: mean over those keypoints with COCO's sigmas; scale s^2: the larger keypoint box area of the two
      (a person entering the image shows a few keypoints first); each keypoint's tolerance is widened by
      `noise_px` (scalar or (P,)), as COCO's alone is ~3 px on a small person's face;
    - IoU: of the boxes of those keypoints, each grown by `noise_px` on every side (a head-only box is a few px).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    noise = np.broadcast_to(np.asarray(noise_px, np.float64), (len(a),))[:, None, None]  # (P, 1, 1)
    both = _valid(a)[:, None, :] & _valid(b)[None, :, :]  # (P, Q, K)
    count = both.sum(axis=-1)  # (P, Q)
    area = np.maximum(_box_area(a)[:, None], _box_area(b)[None, :])  # (P, Q)
    d2 = np.sum((a[:, None, :, :2] - b[None, :, :, :2]) ** 2, axis=-1)  # (P, Q, K)
    tolerance = (2.0 * OKS_SIGMAS[: a.shape[1]]) ** 2 * area[..., None] + noise**2  # (P, Q, K), px^2
    with np.errstate(invalid="ignore"):
        per_kp = np.exp(-d2 / (2.0 * tolerance + np.spacing(1)))  # (P, Q, K), NaN where a keypoint is missing
    oks = np.where(both, per_kp, 0.0).sum(axis=-1) / np.maximum(count, 1)  # (P, Q)

    big = np.array([np.inf, np.inf])
    mask = both[..., None]  # (P, Q, K, 1)
    xy_a, xy_b = a[:, None, :, :2], b[None, :, :, :2]  # (P, 1, K, 2), (1, Q, K, 2)
    lo_a = np.min(np.where(mask, xy_a, big), axis=2) - noise  # (P, Q, 2)
    hi_a = np.max(np.where(mask, xy_a, -big), axis=2) + noise
    lo_b = np.min(np.where(mask, xy_b, big), axis=2) - noise
    hi_b = np.max(np.where(mask, xy_b, -big), axis=2) + noise
    with np.errstate(invalid="ignore"):
        inter = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0.0, None), axis=-1)  # (P, Q)
        union = np.prod(hi_a - lo_a, axis=-1) + np.prod(hi_b - lo_b, axis=-1) - inter  # (P, Q)
        iou = np.where((count > 0) & (union > 0), inter / union, 0.0)  # (P, Q)
    return oks_weight * oks + (1.0 - oks_weight) * iou


def _assign(sim: np.ndarray, tracks: np.ndarray, people: np.ndarray, min_similarity: float) -> dict[int, int]:
    """Hungarian assignment of `people` to `tracks` (index arrays into sim's columns and rows) maximising the summed
    similarity of pairs >= min_similarity -> {person: track}. Deterministic: same matrix, same assignment."""
    if len(tracks) == 0 or len(people) == 0:
        return {}
    sub = sim[np.ix_(tracks, people)]  # (t, p)
    rows, cols = linear_sum_assignment(np.where(sub >= min_similarity, 1.0 - sub, _FORBIDDEN_COST))
    return {int(people[j]): int(tracks[i]) for i, j in zip(rows, cols) if sub[i, j] >= min_similarity}


class OneEuroFilter:
    """One Euro filter (Casiez et al., CHI 2012) on the (K, 2) keypoints of one track.

    A low-pass filter whose cutoff rises with speed: static keypoints are smoothed hard (cutoff `min_cutoff`),
    moving ones follow with little lag (cutoff + `beta` * speed). Each keypoint keeps its own time, so a
    keypoint missing in some frames resumes with the right time step.
    """

    def __init__(self, num_keypoints: int, min_cutoff: float, beta: float, d_cutoff: float):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x = np.full((num_keypoints, 2), np.nan)  # last filtered position, px
        self.dx = np.zeros((num_keypoints, 2))  # last filtered velocity, px/s
        self.t = np.full(num_keypoints, np.nan)  # time of the last update, s; NaN = never seen

    @staticmethod
    def _alpha(cutoff: np.ndarray, dt: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + 1.0 / (2.0 * np.pi * cutoff * dt))

    def __call__(self, xy: np.ndarray, valid: np.ndarray, t: float) -> np.ndarray:
        """Filter (K, 2) positions at time t (s); returns (K, 2) with NaN where not `valid` (K,)."""
        out = np.full_like(self.x, np.nan)  # (K, 2)
        new = valid & np.isnan(self.t)
        self.x[new], self.dx[new], self.t[new] = xy[new], 0.0, t
        out[new] = xy[new]
        seen = valid & ~new
        if seen.any():
            dt = (t - self.t[seen])[:, None]  # (S, 1), > 0: timestamps strictly increase
            dx = (xy[seen] - self.x[seen]) / dt  # (S, 2)
            a_d = self._alpha(self.d_cutoff, dt)
            edx = a_d * dx + (1.0 - a_d) * self.dx[seen]  # (S, 2)
            cutoff = self.min_cutoff + self.beta * np.linalg.norm(edx, axis=1, keepdims=True)  # (S, 1)
            a = self._alpha(cutoff, dt)
            x_hat = a * xy[seen] + (1.0 - a) * self.x[seen]  # (S, 2)
            self.x[seen], self.dx[seen], self.t[seen] = x_hat, edx, t
            out[seen] = x_hat
        return out



class _Track:
    """One live track: where each of its keypoints was last seen (moved along with the body since), its velocity
    and its smoothing filter."""

    def __init__(self, track_id: int, keypoints: np.ndarray, step: int, filt: OneEuroFilter | None):
        self.track_id = track_id
        self.keypoints = keypoints  # (K, 3) float64, keypoints as of `last_step`; NaN, 0 = not seen lately
        self.age = np.where(_valid(keypoints), 0, -1)  # (K,) update calls since each keypoint was seen; -1 never
        self.last_step = step  # update call of the last match
        self.missed = 0  # update calls since then without a match
        self.num_observations = 1
        self.velocity = np.zeros(2)  # px per sampled frame, of the whole person
        self.filter = filt

    def predict(self, step: int, use_velocity: bool) -> np.ndarray:
        """(K, 3) expected keypoints at update call `step`."""
        if not use_velocity:
            return self.keypoints
        shifted = self.keypoints.copy()
        shifted[:, :2] += self.velocity * (step - self.last_step)
        return shifted

    def observe(self, keypoints: np.ndarray, step: int, max_age: int) -> None:
        """Take a matched observation (K, 3). The person's displacement is the median over the keypoints seen in
        both; it moves the keypoints not seen now along, and feeds the velocity (averaged over time). Keypoints
        unseen for more than `max_age` update calls are forgotten."""
        dt = step - self.last_step
        seen = _valid(keypoints)  # (K,)
        common = _valid(self.keypoints) & seen  # (K,)
        if common.any():
            shift = np.median(keypoints[common, :2] - self.keypoints[common, :2], axis=0)  # (2,)
            self.velocity = shift / dt if self.num_observations == 1 else \
                _VELOCITY_WEIGHT * shift / dt + (1.0 - _VELOCITY_WEIGHT) * self.velocity
        else:
            shift = self.velocity * dt
        memory = self.keypoints.copy()
        memory[:, :2] += shift
        memory[seen] = keypoints[seen]
        self.age = np.where(seen, 0, np.where(self.age < 0, -1, self.age + dt))
        memory[self.age > max_age] = [np.nan, np.nan, 0.0]
        self.age[self.age > max_age] = -1
        self.keypoints, self.last_step, self.missed = memory, step, 0
        self.num_observations += 1


class Tracker:
    """Online tracker for one video: call `update` once per sampled frame, in frame order.

    Gaps are counted in update calls (sampled frames), so a frame without people must still be passed (P = 0).
    """

    def __init__(self, config: TrackerConfig = TrackerConfig(), first_track_id: int = 0):
        self.config = config
        self.next_id = int(first_track_id)
        self.step = -1  # index of the last update call
        self.last_frame_index: int | None = None
        self.last_timestamp_s: float | None = None
        self.num_keypoints: int | None = None
        self.tracks: list[_Track] = []  # live tracks, in order of creation

    def _new_filter(self) -> OneEuroFilter | None:
        c = self.config
        if not c.smoothing:
            return None
        return OneEuroFilter(self.num_keypoints, c.smoothing_min_cutoff, c.smoothing_beta, c.smoothing_d_cutoff)

    def _check_frame(self, frame_index: int, timestamp_s: float, keypoints: np.ndarray) -> np.ndarray:
        keypoints = _check_keypoints(keypoints)
        if self.num_keypoints is None:
            self.num_keypoints = keypoints.shape[1]
        elif keypoints.shape[1] != self.num_keypoints:
            raise ValueError(f"expected keypoints (P, {self.num_keypoints}, 3) as in earlier frames, "
                             f"got {keypoints.shape}")
        if self.last_frame_index is not None and frame_index <= self.last_frame_index:
            raise ValueError(f"frames must come in increasing frame_index: got {frame_index} after "
                             f"{self.last_frame_index}; use one Tracker per video and sort its frames")
        if self.config.smoothing and self.last_timestamp_s is not None and timestamp_s <= self.last_timestamp_s:
            raise ValueError(f"smoothing needs strictly increasing timestamps: got {timestamp_s} s after "
                             f"{self.last_timestamp_s} s at frame {frame_index}")
        return keypoints

    def _match(self, people: np.ndarray) -> dict[int, int]:
        """Assign people (P, K, 3), weak keypoints already dropped, to live tracks -> {person: track position}:
        confirmed tracks first, then tentative tracks (fewer than `min_hits` matches) to the people left."""
        c = self.config
        if not self.tracks or len(people) == 0:
            return {}
        predicted = np.stack([t.predict(self.step, c.motion_prediction) for t in self.tracks])  # (T, K, 3)
        missed = np.array([t.missed for t in self.tracks], np.float64)  # (T,) == update calls since seen - 1
        noise_px = np.hypot(c.keypoint_noise_px, c.gap_noise_px * missed)  # (T,)
        sim = similarity_matrix(predicted, people, c.oks_weight, noise_px)  # (T, P)
        sim = sim - c.gap_penalty * missed[:, None]  # (T, P) a long-lost track needs stronger evidence
        confirmed = np.array([t.num_observations >= c.min_hits for t in self.tracks])  # (T,)
        matches = _assign(sim, np.flatnonzero(confirmed), np.arange(len(people)), c.min_similarity)
        left = np.setdiff1d(np.arange(len(people)), list(matches))
        return matches | _assign(sim, np.flatnonzero(~confirmed), left, c.min_similarity)

    def update(self, frame_index: int, timestamp_s: float, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Track the people of the next sampled frame.

        Args:
            frame_index: index of the frame in the video, larger than the previous call's.
            timestamp_s: presentation time, s (drives the One Euro filter).
            keypoints: (P, K, 3) [x, y, score], image pixels; missing keypoint x = y = NaN, score 0; P >= 0.
        Returns:
            track_ids: (P,) int64 (a person without keypoints above min_keypoint_score gets a fresh one-frame id);
            keypoints: (P, K, 3), smoothed when `config.smoothing` is on, else the input unchanged.
        """
        keypoints = self._check_frame(frame_index, timestamp_s, keypoints)
        self.step += 1
        c = self.config
        kp = keypoints.astype(np.float64)
        valid = _valid(kp, c.min_keypoint_score)  # (P, K)
        people = np.where(valid[..., None], kp, [np.nan, np.nan, 0.0])  # (P, K, 3) weak keypoints dropped
        matches = self._match(people)

        track_ids = np.empty(len(kp), dtype=np.int64)
        out = keypoints.copy()
        matched_tracks = set(matches.values())
        survivors = [t for i, t in enumerate(self.tracks) if i in matched_tracks or t.missed + 1 <= c.max_gap]
        for i, t in enumerate(self.tracks):
            if i not in matched_tracks:
                t.missed += 1
        for p in range(len(kp)):
            if p in matches:
                track = self.tracks[matches[p]]
                track.observe(people[p], self.step, c.max_gap)
            else:
                track = _Track(self.next_id, people[p], self.step, self._new_filter())
                self.next_id += 1
                if valid[p].any():
                    survivors.append(track)
                else:
                    logger.debug("frame %d: person %d has no keypoint above score %.2f, one-frame track %d",
                                 frame_index, p, c.min_keypoint_score, track.track_id)
            track_ids[p] = track.track_id
            if track.filter is not None:
                seen = _valid(kp[p])  # smooth every found keypoint, weak ones too
                out[p, :, :2] = np.where(seen[:, None], track.filter(kp[p, :, :2], seen, timestamp_s), out[p, :, :2])
        self.tracks = survivors
        self.last_frame_index, self.last_timestamp_s = int(frame_index), float(timestamp_s)
        return track_ids, out


def confirm_tracks(track_ids: list[np.ndarray], min_hits: int, scores: list[np.ndarray] | None = None,
                   min_track_score: float = 0.0) -> list[np.ndarray]:
    """Final ids of a whole video from the online ids of every frame: a track seen in fewer than `min_hits` frames was
    never confirmed (a fragment or a false detection), nor is one whose people's mean score is below
    `min_track_score` (something the network keeps half-seeing, not a person); their people get UNTRACKED. The
    confirmed tracks are renumbered 0, 1, 2... in their order of creation. Deterministic, and the same for a video
    tracked in chunks.

    Args:
        track_ids: per frame, (P,) int64 ids from `Tracker.update`.
        scores: per frame, (P,) person scores (e.g. `person_scores`); None: no score test.
    Returns:
        per frame, (P,) int64 final ids.
    """
    all_ids = np.concatenate([np.zeros(0, np.int64), *track_ids])
    ids, inverse, counts = np.unique(all_ids, return_inverse=True, return_counts=True)
    keep = counts >= min_hits
    if scores is not None and min_track_score > 0:
        mean = np.bincount(inverse, weights=np.concatenate([np.zeros(0), *scores]), minlength=len(ids)) / counts
        keep &= mean >= min_track_score
    confirmed = ids[keep]  # sorted: creation order
    final = {int(i): n for n, i in enumerate(confirmed.tolist())}
    return [np.array([final.get(int(i), UNTRACKED) for i in frame], np.int64) for frame in track_ids]


def person_scores(keypoints: np.ndarray) -> np.ndarray:
    """(P, K, 3) -> (P,) mean score of each person's found keypoints (0 without any)."""
    found = _valid(np.asarray(keypoints))  # (P, K)
    total = np.where(found, keypoints[..., 2], 0.0).sum(axis=-1)
    return total / np.maximum(found.sum(axis=-1), 1)


def track_video(frames: Iterable[tuple[int, float, np.ndarray]], config: TrackerConfig = TrackerConfig(),
                scores: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Track a whole video: (frame_index, timestamp_s, keypoints (P, K, 3)) in frame order -> per frame
    (track_ids (P,), keypoints (P, K, 3)), ids final (`confirm_tracks`). `scores`: per frame, the model's (P,)
    person scores that `min_track_score` applies to; None: each person's mean keypoint score (`person_scores`)."""
    tracker = Tracker(config)
    frames = list(frames)
    results = [tracker.update(frame_index, timestamp_s, keypoints) for frame_index, timestamp_s, keypoints in frames]
    if scores is None:
        scores = [person_scores(keypoints) for _, _, keypoints in frames]
    final = confirm_tracks([ids for ids, _ in results], config.min_hits, scores, config.min_track_score)
    return [(ids, keypoints) for ids, (_, keypoints) in zip(final, results)]
