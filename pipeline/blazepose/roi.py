"""Rotated square regions of interest and batched affine sampling, on any torch device.

Coordinates here are continuous *corner* coordinates of the frame tensor (pixel i spans [i, i + 1)), as MediaPipe and
`grid_sample(align_corners=False)` use them; the rest of posepipe puts pixel centres on integers (subtract 0.5).
An ROI is a row (frame, cx, cy, side, angle): a square of `side` pixels centred on (cx, cy), rotated by `angle`
radians, so that a crop offset (u, v) maps to the frame point centre + R(angle) (u, v), R = [[cos, -sin], [sin, cos]].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
    """Cut every ROI out of its frame and resample it to (size, size): one bilinear `grid_sample` for all ROIs.

    The frames are stacked as the depth of one volume and each ROI's grid points at its frame's slice exactly, so no
    frame is copied per ROI.

    Args:
        frames: (B, C, H, W) float; rois: (R, 5) with frame indices in [0, B).
        padding_mode: "zeros" (black outside the frame) or "border" (edge pixels repeated).
    Returns:
        (R, C, size, size).
    """
    b, c, h, w = frames.shape
    r = rois.shape[0]
    if r == 0:
        return frames.new_zeros((0, c, size, size))
    cos, sin, side = torch.cos(rois[:, 4]), torch.sin(rois[:, 4]), rois[:, 3]
    theta = torch.stack([
        torch.stack([side * cos / w, -side * sin / w, 2 * rois[:, 1] / w - 1], dim=-1),
        torch.stack([side * sin / h, side * cos / h, 2 * rois[:, 2] / h - 1], dim=-1)], dim=1)  # (R, 2, 3)
    grid = F.affine_grid(theta.to(frames.dtype), [r, c, size, size], align_corners=False)   # (R, size, size, 2)
    depth = (2 * rois[:, 0] + 1) / b - 1                                      # frame slice centres in [-1, 1]
    grid = torch.cat([grid, depth.to(frames.dtype)[:, None, None, None].expand(r, size, size, 1)], dim=-1)
    volume = frames.permute(1, 0, 2, 3).unsqueeze(0)                          # (1, C, B, H, W)
    out = F.grid_sample(volume, grid.unsqueeze(0), mode="bilinear", padding_mode=padding_mode,
                        align_corners=False)                                  # (1, C, R, size, size)
    return out[0].permute(1, 0, 2, 3)
