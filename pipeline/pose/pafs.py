"""Part affinity fields (PAFs): per-limb unit-vector fields that tell which keypoints belong together.

Shape letters: N = people (ground truth), K = keypoint types, L = limbs (`SKELETON` order), H, W = field height and
width, B = images, A / C = candidate start / end points of one limb, S = samples along a candidate limb.
Coordinates are heatmap pixels with the convention of `pipeline.pose.heatmaps` (pixel centres at integers).

Channel 2l of a PAF stack is the x component of limb l, channel 2l + 1 its y component. On pixels within
`limb_width` of a person's limb segment the field is the unit vector from the limb's start keypoint to its end;
elsewhere it is zero. Bottom-up grouping scores a candidate pair (a, c) by the line integral of the field along
the segment a -> c: about 1 for a true limb, about 0 (or negative) for a wrong pair.
The scoring runs in torch so it can run where the fields are (the GPU); the numpy entry point wraps it.
"""

import logging

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.pose.keypoints import SKELETON

logger = logging.getLogger(__name__)

_MIN_LIMB_LENGTH = 1e-6  # heatmap pixels; shorter limbs have no direction and draw / score nothing


def encode_pafs(
    keypoints: np.ndarray,
    size: tuple[int, int],
    skeleton: tuple[tuple[int, int], ...] = SKELETON,
    limb_width: float = 1.0,
) -> np.ndarray:
    """Training target: unit limb directions near each visible limb, averaged where people overlap.

    Args:
        keypoints: (N, K, 3) [x, y, v] in heatmap pixels; a limb is drawn when both ends have v > 0.
        size: (H, W) of the field.
        skeleton: L (start, end) keypoint index pairs.
        limb_width: pixels whose distance to the limb segment is <= this are on the limb.
    Returns:
        (2L, H, W) float32.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"expected keypoints of shape (N, K, 3) [x, y, v], got {keypoints.shape}")
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"expected size (H, W) of positive ints, got {size}")
    if limb_width <= 0:
        raise ValueError(f"expected limb_width > 0 heatmap pixels, got {limb_width}")
    height, width = int(size[0]), int(size[1])
    limbs = np.asarray(skeleton, dtype=np.int64).reshape(-1, 2)  # (L, 2)
    if limbs.size and limbs.max() >= keypoints.shape[1]:
        raise ValueError(f"skeleton refers to keypoint {limbs.max()} but keypoints have K={keypoints.shape[1]}")
    if keypoints.shape[0] == 0:
        return np.zeros((2 * len(limbs), height, width), np.float32)

    start, end = keypoints[:, limbs[:, 0]], keypoints[:, limbs[:, 1]]  # (N, L, 3) each
    delta = end[..., :2] - start[..., :2]  # (N, L, 2)
    length = np.linalg.norm(delta, axis=-1)  # (N, L)
    drawn = (start[..., 2] > 0) & (end[..., 2] > 0) & np.isfinite(length) & (length > _MIN_LIMB_LENGTH)
    length = np.where(drawn, length, 1.0)
    unit = np.where(drawn[..., None], delta / length[..., None], 0.0).astype(np.float32)  # (N, L, 2)
    origin = np.where(drawn[..., None], start[..., :2], 0.0)  # (N, L, 2)

    ux, uy = unit[..., 0, None, None], unit[..., 1, None, None]  # (N, L, 1, 1)
    rel_x = np.arange(width, dtype=np.float32) - origin[..., 0, None, None]  # (N, L, 1, W)
    rel_y = np.arange(height, dtype=np.float32)[:, None] - origin[..., 1, None, None]  # (N, L, H, 1)
    along = np.clip(rel_x * ux + rel_y * uy, 0.0, length[..., None, None])  # (N, L, H, W) closest point on segment
    dist_sq = (rel_x - along * ux) ** 2 + (rel_y - along * uy) ** 2  # (N, L, H, W)
    on_limb = (dist_sq <= limb_width**2) & drawn[..., None, None]  # (N, L, H, W)

    count = on_limb.sum(axis=0)  # (L, H, W)
    field_x = (on_limb * ux).sum(axis=0) / np.maximum(count, 1)  # (L, H, W)
    field_y = (on_limb * uy).sum(axis=0) / np.maximum(count, 1)  # (L, H, W)
    return np.stack([field_x, field_y], axis=1).reshape(2 * len(limbs), height, width).astype(np.float32)


def score_limbs(
    paf: np.ndarray,
    points_a: np.ndarray,
    points_b: np.ndarray,
    num_samples: int = 10,
    alignment_threshold: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Line-integral score of every candidate pair of one limb.

    Args:
        paf: (2, H, W) the limb's field, [x, y] channels.
        points_a: (A, 2) candidate start points [x, y] in heatmap pixels.
        points_b: (C, 2) candidate end points.
        num_samples: S, points sampled (bilinearly) along each segment, ends included.
        alignment_threshold: a sample counts as aligned when field . direction exceeds this.
    Returns:
        score: (A, C) float32, mean of field . unit(b - a) over the samples (0 for coincident points);
        aligned: (A, C) float32, the fraction of samples that are aligned.
    """
    paf = np.asarray(paf, dtype=np.float32)
    if paf.ndim != 3 or paf.shape[0] != 2:
        raise ValueError(f"expected one limb's field of shape (2, H, W), got {paf.shape}")
    points_a, points_b = _as_points(points_a, "points_a"), _as_points(points_b, "points_b")
    score, aligned = score_limb_pairs(
        torch.from_numpy(paf)[None, None],  # (1, 1, 2, H, W)
        torch.from_numpy(points_a)[None, None],  # (1, 1, A, 2)
        torch.from_numpy(points_b)[None, None],  # (1, 1, C, 2)
        num_samples,
        alignment_threshold,
    )
    return score[0, 0].numpy(), aligned[0, 0].numpy()


@torch.no_grad()
def score_limb_pairs(
    pafs: torch.Tensor,
    points_a: torch.Tensor,
    points_b: torch.Tensor,
    num_samples: int = 10,
    alignment_threshold: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`score_limbs` for many images and limbs at once, on the fields' device.

    Args:
        pafs: (B, L, 2, H, W) fields (reshape a (B, 2L, H, W) stack with `.unflatten(1, (-1, 2))`).
        points_a: (B, L, A, 2) start candidates per limb; points_b: (B, L, C, 2) end candidates. NaN points give
            score 0 and aligned 0.
    Returns:
        score, aligned: (B, L, A, C) float32.
    """
    if pafs.ndim != 5 or pafs.shape[2] != 2:
        raise ValueError(f"expected pafs of shape (B, L, 2, H, W), got {tuple(pafs.shape)}")
    if num_samples < 2:
        raise ValueError(f"expected num_samples >= 2 (both segment ends), got {num_samples}")
    batch, limbs, _, height, width = pafs.shape
    a, c = points_a.float()[:, :, :, None, :], points_b.float()[:, :, None, :, :]  # (B, L, A, 1, 2), (B, L, 1, C, 2)
    delta = c - a  # (B, L, A, C, 2)
    length = delta.norm(dim=-1, keepdim=True)  # (B, L, A, C, 1)
    usable = (length > _MIN_LIMB_LENGTH) & length.isfinite()  # NaN padding and coincident points
    unit = torch.where(usable, delta / torch.where(usable, length, torch.ones_like(length)), 0.0)
    delta = torch.where(usable, delta, 0.0)
    a = torch.nan_to_num(a, nan=0.0)

    t = torch.linspace(0.0, 1.0, num_samples, device=pafs.device)[:, None]  # (S, 1)
    samples = a[..., None, :] + t * delta[..., None, :]  # (B, L, A, C, S, 2)
    num_a, num_c = samples.shape[2:4]
    # grid_sample with align_corners=True maps -1 / +1 onto the first / last pixel centres.
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=pafs.device)
    grid = (samples * scale - 1.0).reshape(batch * limbs, num_a * num_c, num_samples, 2)
    field = F.grid_sample(
        pafs.float().reshape(batch * limbs, 2, height, width), grid, align_corners=True, padding_mode="border"
    )  # (B*L, 2, A*C, S)
    field = field.reshape(batch, limbs, 2, num_a, num_c, num_samples)
    alignment = (field * unit.permute(0, 1, 4, 2, 3)[..., None]).sum(dim=2)  # (B, L, A, C, S)
    usable = usable[..., 0]  # (B, L, A, C)
    score = torch.where(usable, alignment.mean(dim=-1), 0.0)
    aligned = torch.where(usable, (alignment > alignment_threshold).float().mean(dim=-1), 0.0)
    return score, aligned


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected {name} of shape (n, 2) [x, y], got {points.shape}")
    return np.ascontiguousarray(points)
