"""Keypoint heatmaps: Gaussian targets, single-peak decoding and multi-person peak finding.

Shape letters: B = images, N = people (ground truth), K = keypoint types, H, W = heatmap height and width,
M = peak slots per keypoint type.

Coordinates: x right, y down, pixel centres at integer coordinates, so heatmap pixel (row i, column j) is the
point (x=j, y=i) and covers [j - 0.5, j + 0.5]. The network's heatmaps have stride 4 relative to its input; heatmap
coordinate h and input coordinate u are related by u = (h + 0.5) * stride - 0.5, which maps each heatmap pixel
centre onto the centre of its stride x stride input block.

The target for one keypoint is the unnormalised Gaussian exp(-|p - c|^2 / (2 sigma^2)) sampled at the pixel centres
p; it peaks at 1.0 at the keypoint c. Its logarithm is an exact quadratic, so a three-point quadratic fit on the log
around the maximum (one per axis, the Gaussian is separable) recovers c exactly; that is the sub-pixel refinement.
The refinement is done in torch so the same code runs on the inference device; the numpy entry points wrap it.
"""

import functools
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_LOG_FLOOR = 1e-10  # heatmap values are clamped to this before the log so zero or negative maps stay finite


def heatmap_to_input(xy, stride: int = 4):
    """Heatmap coordinates -> model-input pixel coordinates: u = (h + 0.5) * stride - 0.5.

    Args:
        xy: numpy array or torch tensor (..., 2) [x, y] in heatmap pixels (NaN passes through).
    Returns:
        the same type and shape, in input pixels.
    """
    return (xy + 0.5) * stride - 0.5


def input_to_heatmap(xy, stride: int = 4):
    """Model-input pixel coordinates -> heatmap coordinates; the inverse of `heatmap_to_input`."""
    return (xy + 0.5) / stride - 0.5


def encode_heatmaps(keypoints: np.ndarray, size: tuple[int, int], sigma: float = 2.0) -> np.ndarray:
    """Training target: one Gaussian of peak 1.0 per visible keypoint, people combined by max.

    Args:
        keypoints: (N, K, 3) [x, y, v] in heatmap pixels; a keypoint is drawn when v > 0 and x, y are finite.
        size: (H, W) of the heatmap.
        sigma: Gaussian standard deviation in heatmap pixels.
    Returns:
        (K, H, W) float32.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(
            f"expected keypoints of shape (N, K, 3) [x, y, v], got {keypoints.shape}; "
            "wrap a single person as keypoints[None]"
        )
    height, width = _check_size(size)
    if sigma <= 0:
        raise ValueError(f"expected sigma > 0 heatmap pixels, got {sigma}")
    num_people, num_keypoints, _ = keypoints.shape
    if num_people == 0:
        return np.zeros((num_keypoints, height, width), np.float32)
    x, y, v = keypoints[..., 0:1], keypoints[..., 1:2], keypoints[..., 2]  # (N, K, 1), (N, K, 1), (N, K)
    visible = (v > 0) & np.isfinite(x[..., 0]) & np.isfinite(y[..., 0])  # (N, K)
    x, y = np.where(visible[..., None], x, 0.0), np.where(visible[..., None], y, 0.0)
    scale = np.float32(-0.5 / sigma**2)
    gx = np.exp(scale * (np.arange(width, dtype=np.float32) - x) ** 2)  # (N, K, W)
    gy = np.exp(scale * (np.arange(height, dtype=np.float32) - y) ** 2)  # (N, K, H)
    gy = gy * visible[..., None]  # invisible keypoints draw nothing
    return (gy[..., :, None] * gx[..., None, :]).max(axis=0).astype(np.float32)  # (K, H, W)


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single best location per heatmap (one person per image), refined to sub-pixel.

    Args:
        heatmaps: (B, K, H, W).
    Returns:
        xy: (B, K, 2) float32 in heatmap pixels; score: (B, K) float32, the value at the integer maximum.
    """
    heatmaps = np.asarray(heatmaps)
    _check_heatmaps(heatmaps)
    xy, score = decode_heatmaps_torch(torch.from_numpy(np.ascontiguousarray(heatmaps, dtype=np.float32)))
    return xy.numpy(), score.numpy()


@torch.no_grad()
def decode_heatmaps_torch(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`decode_heatmaps` on any device and dtype; outputs are float32 on the input's device."""
    _check_heatmaps(heatmaps)
    heatmaps = heatmaps.float()
    width = heatmaps.shape[-1]
    score, index = heatmaps.flatten(2).max(dim=2)  # (B, K), (B, K)
    xy = refine_peaks(heatmaps, (index % width)[..., None], (index // width)[..., None])  # (B, K, 1, 2)
    return xy[..., 0, :], score


@torch.no_grad()
def find_peaks(heatmaps: torch.Tensor, threshold: float = 0.1, max_peaks: int = 20) -> torch.Tensor:
    """Multi-person keypoint candidates: local maxima above a threshold, on the heatmaps' device.

    A pixel is a peak when it is the maximum of its 3x3 neighbourhood (max_pool2d) and strictly above `threshold`;
    on exact plateaus the first pixel in raster order wins, so a keypoint half-way between two pixels yields one peak.

    Args:
        heatmaps: (B, K, H, W) any float dtype, any device.
        threshold: minimum peak value, >= 0.
        max_peaks: M, peak slots per keypoint type; the M highest peaks are kept.
    Returns:
        peaks: (B, K, M, 3) float32 on the same device, rows [x, y, score] in heatmap pixels, sorted by descending
        score. Unused slots are [NaN, NaN, 0]; a slot holds a peak exactly when its score > 0.
    """
    _check_heatmaps(heatmaps)
    if threshold < 0:
        raise ValueError(f"expected threshold >= 0 (scores of unused peak slots are 0), got {threshold}")
    if max_peaks < 1:
        raise ValueError(f"expected max_peaks >= 1, got {max_peaks}")
    heatmaps = heatmaps.float()
    batch, num_keypoints, height, width = heatmaps.shape
    is_peak = (heatmaps == _max_3x3(heatmaps)) & (heatmaps > threshold)
    is_peak &= heatmaps > _max_of_preceding_neighbours(heatmaps)  # plateau tie-break, raster order
    candidates = torch.where(is_peak, heatmaps, torch.full_like(heatmaps, -1.0)).flatten(2)  # (B, K, H*W)
    score, index = candidates.topk(min(max_peaks, height * width), dim=2)  # (B, K, m), descending
    valid = score > threshold  # (B, K, m)
    xy = refine_peaks(heatmaps, index % width, index // width)  # (B, K, m, 2)
    peaks = torch.cat([xy, score[..., None]], dim=-1)  # (B, K, m, 3)
    padding = torch.tensor([float("nan"), float("nan"), 0.0], device=heatmaps.device)
    peaks = torch.where(valid[..., None], peaks, padding)
    if peaks.shape[2] < max_peaks:  # maps smaller than max_peaks pixels
        peaks = torch.cat([peaks, padding.expand(batch, num_keypoints, max_peaks - peaks.shape[2], 3)], dim=2)
    return peaks


@torch.no_grad()
def smooth_heatmaps(heatmaps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (std `sigma` heatmap pixels) of each (B, K, H, W) map, rescaled to keep the map's maximum.

    A network's peaks are not quite Gaussian; blurring makes them closer to one before the log-parabola refinement,
    and it merges the ripples beside a peak that NMS would keep as extra candidates (the modulation of DARK, Zhang et
    al., CVPR 2020). A Gaussian stays a Gaussian with the same centre, so the refinement is still exact. 0: no blur.
    """
    if sigma <= 0:
        return heatmaps
    heatmaps = heatmaps.float()
    channels = heatmaps.shape[1]
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=heatmaps.device)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()                                                   # (2r+1,)
    out = F.pad(heatmaps, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)  # along x
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)  # along y
    peak_in, peak_out = heatmaps.amax(dim=(2, 3), keepdim=True), out.amax(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
    scale = torch.where((peak_in > 0) & (peak_out > 0), peak_in / peak_out.clamp_min(1e-12), torch.ones_like(peak_in))
    return out * scale


@torch.no_grad()
def box_maxima(heatmaps: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The maximum of every keypoint map inside each box, sub-pixel refined as `find_peaks` does, on the maps' device.

    Args:
        heatmaps: (B, K, H, W); image_index: (N,) int64, the image of each box; boxes: (N, 4) [x0, y0, x1, y1] in
            heatmap pixels, edges included.
    Returns:
        (N, K, 3) float32 [x, y, value]; [NaN, NaN, 0] for a box that holds no pixel centre.
    """
    _check_heatmaps(heatmaps)
    heatmaps = heatmaps.float()
    height, width = heatmaps.shape[-2:]
    maps = heatmaps[image_index]  # (N, K, H, W)
    xs = torch.arange(width, device=maps.device, dtype=torch.float32)
    ys = torch.arange(height, device=maps.device, dtype=torch.float32)
    boxes = boxes.to(maps.device, torch.float32)
    inside = ((ys >= boxes[:, 1, None]) & (ys <= boxes[:, 3, None]))[:, :, None] \
        & ((xs >= boxes[:, 0, None]) & (xs <= boxes[:, 2, None]))[:, None, :]  # (N, H, W)
    masked = torch.where(inside[:, None], maps, torch.full_like(maps, float("-inf"))).flatten(2)  # (N, K, H*W)
    value, index = masked.max(dim=2)  # (N, K)
    xy = refine_peaks(maps, (index % width)[..., None], (index // width)[..., None])[:, :, 0]  # (N, K, 2)
    out = torch.cat([xy, value[..., None]], dim=-1)  # (N, K, 3)
    empty = ~inside.flatten(1).any(dim=1)  # (N,)
    return torch.where(empty[:, None, None], torch.tensor([float("nan"), float("nan"), 0.0], device=out.device), out)


def refine_peaks(heatmaps: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, logits: bool = False) -> torch.Tensor:
    """Sub-pixel location of the maxima at integer pixels (ix, iy), each (B, K, M) long -> (B, K, M, 2) float32.

    Per axis, a parabola through the log-heatmap at three consecutive pixels; its vertex is exact for a Gaussian.
    The three pixels are centred on the maximum, or shifted inwards at a border (the vertex is then
    extrapolated, still exact for a Gaussian). Maps too small, flat or not concave there are left at the integer
    pixel, and the result stays within +-0.5 px of it. With `logits`, the maps are logits of the heatmap (its
    values the sigmoid of them): only the pixels read are turned into log-heatmap values.
    """
    height, width = heatmaps.shape[-2:]
    upper, own_axis, steps, strides, refinable = _peak_geometry(width, height, ix.device)
    i = torch.stack([ix, iy], dim=-1)                                           # (B, K, M, 2): x, y
    centre = torch.minimum(i.clamp_min(1), upper - 1)                           # 3 pixels inside the map
    # per axis (x, y), the centre along it and the peak across it, then its 3 pixels: (B, K, M, 2, 3, 2)
    pixels = torch.where(own_axis, centre[..., None, :], i[..., None, :])[..., None, :] + steps
    index = (torch.minimum(pixels.clamp_min(0), upper) * strides).sum(-1)      # (B, K, M, 2, 3)
    values = heatmaps.flatten(2).gather(2, index.flatten(2)).view(index.shape)
    logs = F.logsigmoid(values.float()).clamp_min(math.log(_LOG_FLOOR)) if logits \
        else values.clamp_min(_LOG_FLOOR).log()
    before, at, after = logs.unbind(-1)                                         # (B, K, M, 2)
    curvature = before + after - 2 * at  # < 0 where the log-map is concave
    concave = (curvature < -1e-12) & refinable
    shift = torch.where(concave, centre - i + (before - after) / (2 * curvature), 0.0)
    return i + shift.clamp(-0.5, 0.5)


@functools.lru_cache(maxsize=32)
def _peak_geometry(width: int, height: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Constants of `refine_peaks` for (height, width) maps: the last pixel per axis (2,), which axis each of the
    two fits moves along (2, 2), the 3-pixel steps of each fit (2, 3, 2), the flat index strides (2,) and whether
    each axis is long enough to fit (2,)."""
    with torch.inference_mode(False):  # constants shared by inference and ordinary calls
        own_axis = torch.eye(2, dtype=torch.bool, device=device)
        steps = own_axis[:, None, :] * torch.arange(-1, 2, device=device)[None, :, None]
        return (torch.tensor([width - 1, height - 1], device=device), own_axis, steps,
                torch.tensor([1, width], device=device), torch.tensor([width >= 3, height >= 3], device=device))


def _max_3x3(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) -> the maximum of each pixel's 3x3 neighbourhood (borders see only the pixels inside).

    The same as max_pool2d(heatmaps, 3, stride=1, padding=1), done as a row pass then a column pass of elementwise
    maxima: on a CPU, 4.5 ms instead of 42 ms for a (16, 17, 64, 64) batch on one thread.
    """
    rows = F.pad(heatmaps, (1, 1, 0, 0), value=float("-inf"))                        # (B, K, H, W+2)
    rows = torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])  # (B, K, H, W)
    cols = F.pad(rows, (0, 0, 1, 1), value=float("-inf"))                             # (B, K, H+2, W)
    return torch.maximum(torch.maximum(cols[..., :-2, :], cols[..., 1:-1, :]), cols[..., 2:, :])


def _max_of_preceding_neighbours(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) -> max over the 4 neighbours that come earlier in raster order (left, up-left, up, up-right)."""
    height, width = heatmaps.shape[-2:]
    padded = F.pad(heatmaps, (1, 1, 1, 0), value=float("-inf"))  # (B, K, H+1, W+2), pixel (i, j) at (i+1, j+1)
    left = padded[..., 1:, 0:width]
    up = padded[..., :height, 0 : width + 2]  # previous row, columns j-1 .. j+1 at offsets 0 .. 2
    return torch.maximum(torch.maximum(left, up[..., 0:width]), torch.maximum(up[..., 1 : width + 1], up[..., 2:]))


def _check_heatmaps(heatmaps) -> None:
    if heatmaps.ndim != 4:
        raise ValueError(f"expected heatmaps of shape (B, K, H, W), got {tuple(heatmaps.shape)}")
    if heatmaps.shape[-1] < 1 or heatmaps.shape[-2] < 1:
        raise ValueError(f"expected non-empty heatmaps, got shape {tuple(heatmaps.shape)}")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"expected size (H, W) of positive ints, got {size}")
    return int(size[0]), int(size[1])
