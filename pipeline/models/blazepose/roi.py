"""Rotated square regions of interest and batched affine sampling, on any torch device.

Coordinates here are continuous *corner* coordinates of the frame tensor (pixel i spans [i, i + 1)), as MediaPipe and
`grid_sample(align_corners=False)` use them; the rest of posepipe puts pixel centres on integers (subtract 0.5).
An ROI is a row (frame, cx, cy, side, angle): a square of `side` pixels centred on (cx, cy), rotated by `angle`
radians, so that a crop offset (u, v) maps to the frame point centre + R(angle) (u, v), R = [[cos, -sin], [sin, cos]].
"""

from __future__ import annotations

import math

import numpy as np
import torch


def rois_from_alignment(frame: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                        scale: float = 1.25) -> torch.Tensor:
    """MediaPipe's AlignmentPointsRects + RectTransformation: centre at `start`, side 2 * |end - start| * `scale`,
    rotated so that start -> end points up in the crop.

    Args:
        frame: (R,) frame index of each ROI; start, end: (R, 2) frame points (corner coordinates).
    Returns:
        (R, 5) ROIs (frame, cx, cy, side, angle).
    """
    delta = end - start                                                       # (R, 2)
    side = 2.0 * torch.linalg.vector_norm(delta, dim=-1) * scale
    angle = math.pi / 2 - torch.atan2(-delta[:, 1], delta[:, 0])
    angle = torch.remainder(angle + math.pi, 2 * math.pi) - math.pi          # (-pi, pi]
    return torch.stack([frame.to(start.dtype), start[:, 0], start[:, 1], side, angle], dim=-1)


def crop_to_frame(rois: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Points in crop-normalised coordinates (0..1 across the crop) -> frame corner coordinates.

    Args:
        rois: (R, 5); uv: (R, N, 2).
    Returns:
        (R, N, 2).
    """
    cos, sin = torch.cos(rois[:, 4])[:, None], torch.sin(rois[:, 4])[:, None]  # (R, 1)
    u, v = (uv[..., 0] - 0.5) * rois[:, 3:4], (uv[..., 1] - 0.5) * rois[:, 3:4]  # (R, N)
    return torch.stack([rois[:, 1:2] + cos * u - sin * v, rois[:, 2:3] + sin * u + cos * v], dim=-1)


def sample_rois(frames: torch.Tensor, rois: torch.Tensor, size: int, padding_mode: str = "zeros") -> torch.Tensor:
    """Cut every ROI out of its frame and resample it to (size, size), bilinear.

    On a CPU each ROI is one OpenCV `warpAffine` (float32, from the part of the frame it reads); elsewhere all ROIs
    of all frames are one vectorised gather on the device (`gather_rois`), with no host sync and a fixed number of
    kernels whatever the number of frames and people.

    Args:
        frames: (B, H, W, C) uint8; rois: (R, 5) with frame indices in [0, B).
        padding_mode: "zeros" (black outside the frame) or "border" (edge pixels repeated).
    Returns:
        (R, C, size, size) float32, values in 0..255.
    """
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"expected padding_mode zeros or border, got {padding_mode!r}")
    if frames.device.type == "cpu":
        return warp_rois(frames, rois, size, padding_mode)
    return gather_rois(frames, rois, size, padding_mode)


def crop_matrices(rois: torch.Tensor, size: int) -> torch.Tensor:
    """(R, 2, 3) affine maps from crop pixel (col, row) to frame pixel, both with pixel centres on integers."""
    _, cx, cy, side, angle = rois.double().unbind(-1)
    cos, sin, k = torch.cos(angle), torch.sin(angle), side / size
    half = 0.5 * k - side / 2                             # crop pixel 0's centre, from the crop's centre
    tx = cx - 0.5 + (cos - sin) * half
    ty = cy - 0.5 + (sin + cos) * half
    return torch.stack([torch.stack([cos * k, -sin * k, tx], -1), torch.stack([sin * k, cos * k, ty], -1)], 1)


def warp_rois(frames: torch.Tensor, rois: torch.Tensor, size: int, padding_mode: str) -> torch.Tensor:
    """`sample_rois` on a CPU: one OpenCV warp per ROI, in float32, from the frame tensor's memory.

    Each ROI converts only the part of its frame it reads (its bounding box and one pixel around) to float32, so the
    cost follows the crops, not the frames. Warping the uint8 frame instead rounds every crop pixel to an integer,
    which cost the default model 0.025 OKS AP on real-dev (docs/performance.md, session 11).
    """
    import cv2

    images = frames.numpy()
    h, w = images.shape[1:3]
    matrices = crop_matrices(rois, size).numpy()                                  # (R, 2, 3)
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], np.float64)
    reach = np.einsum("rij,cj->rci", matrices, corners)                           # (R, 4, 2) frame pixels
    low = np.floor(reach.min(1)).astype(np.int64) - 1
    high = np.ceil(reach.max(1)).astype(np.int64) + 2
    x0, y0 = np.clip(low[:, 0], 0, w - 1), np.clip(low[:, 1], 0, h - 1)          # clipped only at the frame's
    x1, y1 = np.clip(high[:, 0], x0 + 1, w), np.clip(high[:, 1], y0 + 1, h)       # edges, where the border applies
    index = rois[:, 0].long().tolist()
    border = cv2.BORDER_CONSTANT if padding_mode == "zeros" else cv2.BORDER_REPLICATE
    out = np.empty((len(index), size, size, images.shape[-1]), np.float32)
    for r, f in enumerate(index):
        region = images[f, y0[r]:y1[r], x0[r]:x1[r]].astype(np.float32)
        matrix = matrices[r].copy()
        matrix[:, 2] -= (x0[r], y0[r])
        cv2.warpAffine(region, matrix, (size, size), dst=out[r],
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border, borderValue=0)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def gather_rois(frames: torch.Tensor, rois: torch.Tensor, size: int, padding_mode: str) -> torch.Tensor:
    """`sample_rois` as one gather over all frames: each output pixel reads its 4 neighbours of its frame."""
    b, h, w, c = frames.shape
    matrices = crop_matrices(rois, size).float()                                   # (R, 2, 3)
    grid = torch.arange(size, device=frames.device, dtype=torch.float32)
    col, row = grid[None, None, :], grid[None, :, None]
    x = matrices[:, 0, 0, None, None] * col + matrices[:, 0, 1, None, None] * row + matrices[:, 0, 2, None, None]
    y = matrices[:, 1, 0, None, None] * col + matrices[:, 1, 1, None, None] * row + matrices[:, 1, 2, None, None]
    if padding_mode == "border":
        x, y = x.clamp(0, w - 1), y.clamp(0, h - 1)                                # (R, size, size)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    base = rois[:, 0].long()[:, None, None] * (h * w)
    flat = frames.reshape(b * h * w, c)
    out = 0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = (x0 + dx).long(), (y0 + dy).long()
            inside = ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h))[..., None]
            pixel = flat[base + yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)].float()  # (R, size, size, C)
            out = out + pixel * (wx * wy * inside)
    return out.permute(0, 3, 1, 2).contiguous()
