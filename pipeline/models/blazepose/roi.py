"""Rotated square regions of interest and batched affine sampling, on any torch device.

Coordinates here are continuous *corner* coordinates of the frame tensor (pixel i spans [i, i + 1)), as MediaPipe and
`grid_sample(align_corners=False)` use them; the rest of posepipe puts pixel centres on integers (subtract 0.5).
An ROI is a row (frame, cx, cy, side, angle): a square of `side` pixels centred on (cx, cy), rotated by `angle`
radians, so that a crop offset (u, v) maps to the frame point centre + R(angle) (u, v), R = [[cos, -sin], [sin, cos]].
Crops are cut and mapped back by their affine maps from crop to frame (`crop_matrices`), (R, 2, 3) per batch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


def crop_matrices(rois: torch.Tensor, size: int) -> torch.Tensor:
    """(R, 5) ROIs -> (R, 2, 3) affine maps from a (size, size) crop's corner coordinates to the frame's."""
    _, cx, cy, side, angle = rois.unbind(-1)
    k = side / size
    a, b = torch.cos(angle) * k, torch.sin(angle) * k
    half = size / 2
    return torch.stack([a, -b, cx - (a - b) * half, b, a, cy - (a + b) * half], dim=-1).view(-1, 2, 3)


def alignment_matrices(start: torch.Tensor, end: torch.Tensor, scale: float, size: int) -> torch.Tensor:
    """MediaPipe's AlignmentPointsRects + RectTransformation as crop maps (`crop_matrices`): centre at `start`, side
    2 * |end - start| * `scale`, rotated so that start -> end points up in the crop.

    The map is linear in the two points (the rotation's cosine and sine are the normalised direction, and the side
    cancels the normalisation), so it is one small matrix product, whatever the number of people.

    Args:
        start, end: (R, 2) frame points (corner coordinates).
    Returns:
        (R, 2, 3).
    """
    points = torch.cat([start, end - start], dim=-1)                               # (R, 4) x, y, dx, dy
    return (points @ _alignment_basis(scale, size, start.dtype, start.device)).view(-1, 2, 3)


@functools.lru_cache(maxsize=16)
def _alignment_basis(scale: float, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(4, 6): rows x, y, dx, dy -> the map's entries a, -b, tx, b, a, ty with a = -c dy, b = c dx, c = 2 scale /
    size, and the crop's corner at start - (a - b, a + b) size / 2."""
    c = 2.0 * scale / size
    rows = [[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, -c, scale, c, 0, -scale], [-c, 0, scale, 0, -c, scale]]
    with torch.inference_mode(False):  # a constant shared by inference and ordinary calls
        return torch.tensor(rows, dtype=dtype, device=device)


def crop_to_frame(matrices: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Points (R, N, 2) in crop corner coordinates -> frame corner coordinates, by each crop's map (R, 2, 3)."""
    return torch.baddbmm(matrices[:, None, :, 2], xy, matrices[..., :2].mT)


def sample_rois(frames: torch.Tensor, frame: torch.Tensor, matrices: torch.Tensor, size: int,
                padding_mode: str = "zeros") -> torch.Tensor:
    """Cut every crop out of its frame and resample it to (size, size), bilinear.

    On a CPU each crop is one OpenCV `warpAffine` (float32, from the part of the frame it reads); elsewhere all crops
    of all frames are one vectorised gather on the device (`gather_rois`), with no host sync and a fixed number of
    kernels whatever the number of frames and people.

    Args:
        frames: (B, H, W, C) uint8; frame: (R,) index of each crop's frame in [0, B); matrices: (R, 2, 3) crop maps
            (`crop_matrices`, `alignment_matrices`).
        padding_mode: "zeros" (black outside the frame) or "border" (edge pixels repeated).
    Returns:
        (R, C, size, size) float32, values in 0..255.
    """
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"expected padding_mode zeros or border, got {padding_mode!r}")
    if frames.device.type == "cpu":
        return warp_rois(frames, frame, matrices, size, padding_mode)
    return gather_rois(frames, frame, matrices, size, padding_mode)


def centred(matrices: torch.Tensor) -> torch.Tensor:
    """Crop maps in corner coordinates -> the same maps between pixel-centre coordinates (pixel i at i), as OpenCV
    and array indices use them."""
    linear = matrices[..., :2]
    return torch.cat([linear, matrices[..., 2:] + linear.sum(-1, keepdim=True) * 0.5 - 0.5], dim=-1)


def warp_rois(frames: torch.Tensor, frame: torch.Tensor, matrices: torch.Tensor, size: int,
              padding_mode: str) -> torch.Tensor:
    """`sample_rois` on a CPU: one OpenCV warp per ROI, in float32, from the frame tensor's memory.

    Each ROI converts only the part of its frame it reads (its bounding box and one pixel around) to float32, so the
    cost follows the crops, not the frames. Warping the uint8 frame instead rounds every crop pixel to an integer,
    which cost the default model 0.025 OKS AP on real-dev (docs/performance.md, session 11).
    """
    import cv2

    images = frames.numpy()
    h, w = images.shape[1:3]
    matrices = centred(matrices.double()).numpy()                                     # (R, 2, 3)
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], np.float64)
    reach = np.einsum("rij,cj->rci", matrices, corners)                           # (R, 4, 2) frame pixels
    low = np.floor(reach.min(1)).astype(np.int64) - 1
    high = np.ceil(reach.max(1)).astype(np.int64) + 2
    x0, y0 = np.clip(low[:, 0], 0, w - 1), np.clip(low[:, 1], 0, h - 1)          # clipped only at the frame's
    x1, y1 = np.clip(high[:, 0], x0 + 1, w), np.clip(high[:, 1], y0 + 1, h)       # edges, where the border applies
    index = frame.tolist()
    border = cv2.BORDER_CONSTANT if padding_mode == "zeros" else cv2.BORDER_REPLICATE
    out = np.empty((len(index), size, size, images.shape[-1]), np.float32)
    for r, f in enumerate(index):
        region = images[f, y0[r]:y1[r], x0[r]:x1[r]].astype(np.float32)
        matrix = matrices[r].copy()
        matrix[:, 2] -= (x0[r], y0[r])
        cv2.warpAffine(region, matrix, (size, size), dst=out[r],
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border, borderValue=0)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def gather_rois(frames: torch.Tensor, frame: torch.Tensor, matrices: torch.Tensor, size: int,
                padding_mode: str) -> torch.Tensor:
    """`sample_rois` as one gather over all frames: each output pixel reads its 4 neighbours of its frame."""
    b, h, w, c = frames.shape
    matrices = centred(matrices.float())                                           # (R, 2, 3)
    grid = torch.arange(size, device=frames.device, dtype=torch.float32)
    col, row = grid[None, None, :], grid[None, :, None]
    x = matrices[:, 0, 0, None, None] * col + matrices[:, 0, 1, None, None] * row + matrices[:, 0, 2, None, None]
    y = matrices[:, 1, 0, None, None] * col + matrices[:, 1, 1, None, None] * row + matrices[:, 1, 2, None, None]
    if padding_mode == "border":
        x, y = x.clamp(0, w - 1), y.clamp(0, h - 1)                                # (R, size, size)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    base = frame[:, None, None] * (h * w)
    flat = frames.reshape(b * h * w, c)
    out = 0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = (x0 + dx).long(), (y0 + dy).long()
            inside = ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h))[..., None]
            pixel = flat[base + yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)].float()  # (R, size, size, C)
            out = out + pixel * (wx * wy * inside)
    return out.permute(0, 3, 1, 2).contiguous()
