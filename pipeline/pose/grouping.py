"""Bottom-up multi-person grouping (OpenPose style): keypoint peaks + part affinity fields -> people.

Shape letters: B = images, K = keypoint types, L = limbs (`SKELETON` order), H, W = heatmap size, M = peak slots per
keypoint type, P = people found. Coordinates are heatmap pixels (see `pipeline.pose.heatmaps`).

Steps, per image:
1. Candidates: `smooth_heatmaps` (a small Gaussian blur), then `find_peaks` (3x3 NMS, threshold, top M,
   sub-pixel), on the device that holds the maps.
2. Limb scores: for every limb and every (start, end) candidate pair, the PAF line integral (`score_limb_pairs`),
   also on that device; only the peaks and the (L, M, M) pair scores move to the CPU, never the full fields.
   A pair's score gets OpenPose's distance prior min(max_limb_length * H / length - 1, 0), which penalises
   limbs longer than `max_limb_length` of the map height. A pair is a possible limb when at least
   `min_aligned_fraction` of its samples are aligned with the field and its score exceeds `min_limb_score`.
3. Per limb, greedy matching by descending score, each candidate used at most once per limb.
4. Assembly, limb by limb: a limb joins the person that already holds one of its ends, merges two people that
   hold one end each (when they share no keypoint type), or starts a new person. Every candidate belongs to at
   most one person; a limb that would contradict a person's existing keypoint is dropped.
5. Person score = mean peak score of its keypoints. People with fewer than `min_keypoints` keypoints or a score
   below `min_person_score` are dropped; the rest are ordered by descending score (ties: order of creation),
   so the output is deterministic.
6. Completion (`fill_margin`): each keypoint type a person still lacks is taken at its map's maximum inside the
   person's box, if the map responds there (`_fill_missing`).
"""

import logging
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.pose.heatmaps import box_maxima, find_peaks, smooth_heatmaps
from pipeline.pose.keypoints import NUM_KEYPOINTS, SKELETON
from pipeline.pose.pafs import score_limb_pairs

logger = logging.getLogger(__name__)

_FILL_MIN_SCORE = 0.05  # a missing keypoint is filled only where its heatmap responds at least this much


@dataclass(frozen=True)
class GroupingConfig:
    """How peaks become people. The defaults were tuned on the synthetic val split for models/posepipe-synthetic.pt
    (models/posepipe-synthetic.md has what each change bought); tune again on a val split for another checkpoint."""

    peak_threshold: float = 0.3  # heatmap value a keypoint candidate must exceed (targets peak at 1.0)
    heatmap_blur: float = 1.0  # std (heatmap px) of the Gaussian blur before peak finding (`smooth_heatmaps`); 0: off
    max_peaks: int = 20  # M, candidates kept per keypoint type and image
    num_samples: int = 10  # points sampled along a candidate limb for the PAF line integral
    alignment_threshold: float = 0.05  # a sample is aligned when PAF . limb direction exceeds this
    min_aligned_fraction: float = 0.8  # fraction of aligned samples a limb needs
    min_limb_score: float = 0.05  # mean alignment (with distance prior) a limb must exceed
    max_limb_length: float = 0.5  # limbs longer than this fraction of the map height are penalised
    min_keypoints: int = 5  # people with fewer keypoints are dropped (fragments)
    min_person_score: float = 0.2  # people whose mean keypoint score is lower are dropped
    fill_margin: float | None = 0.25  # complete each person: a keypoint type the limbs did not join is taken at its
    # heatmap's maximum inside the person's keypoint box grown by this fraction of its longer side, because OKS
    # counts a missing keypoint as wrong; None: leave it missing

    def __post_init__(self) -> None:
        if self.peak_threshold < 0:
            raise ValueError(f"expected peak_threshold >= 0, got {self.peak_threshold}")
        if self.heatmap_blur < 0:
            raise ValueError(f"expected heatmap_blur >= 0 (0: no blur), got {self.heatmap_blur}")
        for name in ("max_peaks", "min_keypoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.num_samples < 2:
            raise ValueError(f"expected num_samples >= 2, got {self.num_samples}")
        if not 0 <= self.min_aligned_fraction <= 1:
            raise ValueError(f"expected min_aligned_fraction in [0, 1], got {self.min_aligned_fraction}")
        if self.max_limb_length <= 0:
            raise ValueError(f"expected max_limb_length > 0 (fraction of map height), got {self.max_limb_length}")
        if self.fill_margin is not None and self.fill_margin < 0:
            raise ValueError(f"expected fill_margin >= 0 or None (no filling), got {self.fill_margin}")


def group_people(
    heatmaps: np.ndarray, pafs: np.ndarray, config: GroupingConfig = GroupingConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """People in ONE image.

    Args:
        heatmaps: (K, H, W); pafs: (2L, H, W).
    Returns:
        keypoints: (P, K, 3) float32 [x, y, score] in heatmap pixels, missing keypoints [NaN, NaN, 0];
        scores: (P,) float32, descending.
    """
    heatmaps, pafs = np.asarray(heatmaps, dtype=np.float32), np.asarray(pafs, dtype=np.float32)
    if heatmaps.ndim != 3 or pafs.ndim != 3:
        raise ValueError(
            f"expected one image's heatmaps (K, H, W) and pafs (2L, H, W), got {heatmaps.shape} and {pafs.shape}; "
            "use group_people_batch for batches"
        )
    return group_people_batch(torch.from_numpy(heatmaps)[None], torch.from_numpy(pafs)[None], config)[0]


@torch.no_grad()
def group_people_batch(
    heatmaps: torch.Tensor, pafs: torch.Tensor, config: GroupingConfig = GroupingConfig()
) -> list[tuple[np.ndarray, np.ndarray]]:
    """People in each image of a batch; peak finding and limb scoring run on the tensors' device.

    Args:
        heatmaps: (B, K, H, W); pafs: (B, 2L, H, W); any float dtype and device.
    Returns:
        one (keypoints (P, K, 3), scores (P,)) per image, as in `group_people`.
    """
    _check_fields(heatmaps, pafs)
    batch, num_keypoints, height, _ = heatmaps.shape
    heatmaps = smooth_heatmaps(heatmaps, config.heatmap_blur)
    peaks = find_peaks(heatmaps, config.peak_threshold, config.max_peaks)
    used = int((peaks[..., 2] > 0).sum(dim=-1).max())  # the one device sync: trims empty peak slots
    if used == 0:
        return [_no_people(num_keypoints) for _ in range(batch)]
    peaks = peaks[:, :, :used]  # (B, K, m, 3)
    limbs = torch.as_tensor(SKELETON, device=peaks.device)  # (L, 2)
    score, aligned = score_limb_pairs(
        pafs.unflatten(1, (len(SKELETON), 2)),  # (B, L, 2, H, W)
        peaks[:, limbs[:, 0], :, :2],  # (B, L, m, 2)
        peaks[:, limbs[:, 1], :, :2],  # (B, L, m, 2)
        config.num_samples,
        config.alignment_threshold,
    )  # (B, L, m, m) each
    peaks, score, aligned = peaks.cpu().numpy(), score.cpu().numpy(), aligned.cpu().numpy()
    people = [_assemble_people(peaks[b], score[b], aligned[b], height, config) for b in range(batch)]
    return people if config.fill_margin is None else _fill_missing(heatmaps, people, config.fill_margin)


def _assemble_people(
    peaks: np.ndarray, score: np.ndarray, aligned: np.ndarray, height: int, config: GroupingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One image: peaks (K, M, 3), pair scores and aligned fractions (L, M, M) -> (P, K, 3), (P,)."""
    num_keypoints = peaks.shape[0]
    limbs = np.asarray(SKELETON)  # (L, 2)
    valid = peaks[..., 2] > 0  # (K, M)
    start, end = peaks[limbs[:, 0], :, None, :2], peaks[limbs[:, 1], None, :, :2]  # (L, M, 1, 2), (L, 1, M, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        length = np.linalg.norm(end - start, axis=-1)  # (L, M, M), NaN for empty slots
        total = score + np.minimum(config.max_limb_length * height / length - 1.0, 0.0)  # (L, M, M)
        possible = (
            valid[limbs[:, 0], :, None]
            & valid[limbs[:, 1], None, :]
            & (aligned >= config.min_aligned_fraction)
            & (total > config.min_limb_score)
        )  # (L, M, M)

    people: list[list[int] | None] = []  # per person, the peak slot of each keypoint type (-1: none); None: merged
    owner: dict[tuple[int, int], int] = {}  # (keypoint type, peak slot) -> its person
    for limb, (ka, kb) in enumerate(SKELETON):
        for ia, ib in _match_greedily(total[limb], possible[limb]):
            _add_limb(people, owner, ka, int(ia), kb, int(ib))
    members = np.array([p for p in people if p is not None], dtype=np.int64).reshape(-1, num_keypoints)  # (P, K)

    present = members >= 0  # (P, K)
    keypoints = peaks[np.arange(num_keypoints), np.maximum(members, 0)]  # (P, K, 3)
    keypoints = np.where(present[..., None], keypoints, np.array([np.nan, np.nan, 0.0], np.float32))
    count = present.sum(axis=1)  # (P,)
    scores = keypoints[..., 2].sum(axis=1) / np.maximum(count, 1)  # (P,) mean keypoint score
    keep = (count >= config.min_keypoints) & (scores >= config.min_person_score)
    keypoints, scores = keypoints[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return keypoints[order].astype(np.float32), scores[order].astype(np.float32)


def _fill_missing(heatmaps: torch.Tensor, people: list[tuple[np.ndarray, np.ndarray]],
                  margin: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Give each person the keypoint types it lacks: each map's maximum inside the person's keypoint box grown by
    `margin` x its longer side, where that maximum is above _FILL_MIN_SCORE. Person scores stay as assembled.
    One call to `box_maxima` for the whole batch, on the maps' device; only (people, K, 3) comes back."""
    owners, boxes = [], []
    for b, (keypoints, _) in enumerate(people):
        for kp in keypoints:
            found = kp[kp[:, 2] > 0, :2]  # (n, 2)
            lo, hi = found.min(axis=0), found.max(axis=0)
            grow = margin * max(float((hi - lo).max()), 1.0)
            owners.append(b)
            boxes.append([lo[0] - grow, lo[1] - grow, hi[0] + grow, hi[1] + grow])
    if not boxes:
        return people
    maxima = box_maxima(heatmaps, torch.tensor(owners, device=heatmaps.device),
                        torch.tensor(boxes, dtype=torch.float32)).cpu().numpy()  # (N, K, 3)
    i = 0
    for keypoints, _ in people:
        for kp in keypoints:
            missing = (kp[:, 2] <= 0) & (maxima[i, :, 2] > _FILL_MIN_SCORE)  # (K,)
            kp[missing] = maxima[i, missing]
            i += 1
    return people


def _match_greedily(score: np.ndarray, possible: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (a, b) of one limb by descending score, each start and each end used at most once."""
    pair_a, pair_b = np.nonzero(possible)
    order = np.argsort(-score[pair_a, pair_b], kind="stable")
    used_a, used_b, matches = set(), set(), []
    for a, b in zip(pair_a[order].tolist(), pair_b[order].tolist()):
        if a not in used_a and b not in used_b:
            used_a.add(a)
            used_b.add(b)
            matches.append((a, b))
    return matches


def _add_limb(people: list[list[int] | None], owner: dict[tuple[int, int], int], ka: int, ia: int, kb: int,
              ib: int) -> None:
    """Add the limb (candidate ia of type ka, candidate ib of type kb) to the people, in place.

    Plain lists and a dict of owners: this runs for every limb of every frame, and numpy's per-call overhead on
    arrays of a few people made it the largest cost of grouping on a CPU.
    """
    pa, pb = owner.get((ka, ia)), owner.get((kb, ib))
    if pa is None and pb is None:  # a new person
        person = [-1] * NUM_KEYPOINTS
        person[ka], person[kb] = ia, ib
        people.append(person)
        owner[ka, ia] = owner[kb, ib] = len(people) - 1
        return
    if pa is None or pb is None or pa == pb:  # one person holds an end (or both)
        index = pa if pa is not None else pb
        person = people[index]
        if person[ka] in (-1, ia) and person[kb] in (-1, ib):
            person[ka], person[kb] = ia, ib
            owner[ka, ia] = owner[kb, ib] = index
        return  # otherwise the limb contradicts this person's keypoints: drop it
    first, second = min(pa, pb), max(pa, pb)  # one holds the start, the other the end
    if any(a >= 0 and b >= 0 for a, b in zip(people[first], people[second])):
        return  # both have a keypoint of some type: two people, not one
    for k, slot in enumerate(people[second]):
        if slot >= 0:
            people[first][k] = slot
            owner[k, slot] = first
    people[second] = None


def _no_people(num_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, num_keypoints, 3), np.float32), np.zeros((0,), np.float32)


def _check_fields(heatmaps: torch.Tensor, pafs: torch.Tensor) -> None:
    expected = f"heatmaps (B, {NUM_KEYPOINTS}, H, W) and pafs (B, {2 * len(SKELETON)}, H, W)"
    if heatmaps.ndim != 4 or pafs.ndim != 4:
        raise ValueError(f"expected {expected}, got {tuple(heatmaps.shape)} and {tuple(pafs.shape)}")
    b, k, h, w = heatmaps.shape
    if k != NUM_KEYPOINTS or tuple(pafs.shape) != (b, 2 * len(SKELETON), h, w):
        raise ValueError(f"expected {expected}, got {tuple(heatmaps.shape)} and {tuple(pafs.shape)}")
