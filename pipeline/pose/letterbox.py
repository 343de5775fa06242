"""Letterbox resize and normalisation: how an original frame becomes model input, and how points map back.

Coordinates follow the pixel-centre convention (pixel i spans [i - 0.5, i + 0.5]). A resize by factor s maps
x -> (x + 0.5) * s - 0.5, which is exactly what cv2.resize and decord's scaler do; the letterbox then adds padding.
Frames stay uint8 (H, W, 3) RGB until the inference device, where `normalize` turns a batch into float input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

IMAGE_MEAN = (0.485, 0.456, 0.406)  # RGB, applied to values in 0..1 (ImageNet statistics)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Letterbox:
    """Maps an original (width x height) frame into a square `size` input, keeping aspect ratio; or, unpadded, into
    a frame of its own aspect whose longer side is at most `size` (never enlarged)."""

    width: int          # original frame, pixels
    height: int
    size: int           # square model input, pixels
    resized_width: int  # frame size after the resize, before padding
    resized_height: int
    pad_x: int          # left padding, pixels
    pad_y: int          # top padding, pixels
    padded: bool = True  # False: the frame is the resized picture alone

    @classmethod
    def fit(cls, width: int, height: int, size: int, pad: bool = True) -> "Letterbox":
        """`pad`: letterbox into the (size, size) square; else only shrink to fit it (the top-down model's frames:
        its crops are cut on the device from frames of any shape, so frames travel at their own size)."""
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        scale = size / max(width, height) if pad else min(1.0, size / max(width, height))
        resized_width = max(1, min(size, round(width * scale)))
        resized_height = max(1, min(size, round(height * scale)))
        if not pad:
            return cls(width, height, size, resized_width, resized_height, 0, 0, padded=False)
        return cls(width, height, size, resized_width, resized_height,
                   (size - resized_width) // 2, (size - resized_height) // 2)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(height, width) of the frame the model gets."""
        return (self.size, self.size) if self.padded else (self.resized_height, self.resized_width)

    @property
    def picture_box(self) -> tuple[int, int, int, int]:
        """x0, y0, w, h of the resized picture inside the square input (the rest is padding)."""
        return self.pad_x, self.pad_y, self.resized_width, self.resized_height

    @property
    def scale_x(self) -> float:
        return self.resized_width / self.width

    @property
    def scale_y(self) -> float:
        return self.resized_height / self.height

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        """Original-image pixel coordinates (..., 2) -> model-input coordinates (..., 2)."""
        xy = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] + 0.5) * self.scale_x - 0.5 + self.pad_x
        out[..., 1] = (xy[..., 1] + 0.5) * self.scale_y - 0.5 + self.pad_y
        return out

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        """Model-input coordinates (..., 2) -> original-image pixel coordinates (..., 2)."""
        uv = np.asarray(uv, dtype=np.float64)
        out = np.empty_like(uv)
        out[..., 0] = (uv[..., 0] - self.pad_x + 0.5) / self.scale_x - 0.5
        out[..., 1] = (uv[..., 1] - self.pad_y + 0.5) / self.scale_y - 0.5
        return out

    def pad(self, resized: np.ndarray, fill: int = 0) -> np.ndarray:
        """Place frames already resized to (resized_height, resized_width) into the square input.

        Args:
            resized: (..., h, w, 3) uint8.
        Returns:
            (..., size, size, 3) uint8; unpadded, `resized` itself.
        """
        if resized.shape[-3:-1] != (self.resized_height, self.resized_width):
            raise ValueError(f"expected frames of {self.resized_height}x{self.resized_width}, "
                             f"got {resized.shape[-3]}x{resized.shape[-2]}")
        if not self.padded:
            return resized
        out = np.full(resized.shape[:-3] + (self.size, self.size, 3), fill, dtype=np.uint8)
        out[..., self.pad_y:self.pad_y + self.resized_height, self.pad_x:self.pad_x + self.resized_width, :] = resized
        return out

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Resize and pad one original (height, width, 3) uint8 frame to (size, size, 3) (unpadded: resize only)."""
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"expected a {self.height}x{self.width} frame, got {frame.shape[0]}x{frame.shape[1]}")
        shrinking = self.resized_width < self.width
        resized = cv2.resize(frame, (self.resized_width, self.resized_height),
                             interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        return self.pad(resized)


def letterbox_frames(frames: torch.Tensor, letterbox: Letterbox) -> torch.Tensor:
    """Frames of one video as they travel, shrunk to fit or at their own size (`Letterbox.fit(..., pad=False)`),
    letterboxed into `letterbox`'s square on their device: uint8 (B, h, w, 3) -> (B, size, size, 3).

    Resized as `Letterbox.apply` resizes (area when shrinking, bilinear when enlarging; OpenCV on a CPU, torch's
    bilinear on a GPU), then padded with black. Frames already at the resized size are only padded.
    """
    import torch  # see `normalize`

    out = torch.zeros((len(frames), letterbox.size, letterbox.size, 3), dtype=torch.uint8, device=frames.device)
    size = (letterbox.resized_height, letterbox.resized_width)
    inside = out[:, letterbox.pad_y:letterbox.pad_y + size[0], letterbox.pad_x:letterbox.pad_x + size[1]]
    if tuple(frames.shape[1:3]) == size:
        inside.copy_(frames)
    elif frames.device.type == "cpu":
        shrinking = size[1] < frames.shape[2]
        for frame, target in zip(frames.numpy(), inside):
            target.copy_(torch.from_numpy(cv2.resize(frame, size[::-1], interpolation=cv2.INTER_AREA if shrinking
                                                     else cv2.INTER_LINEAR)))
    else:
        x = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=size, mode="bilinear",
                                            align_corners=False, antialias=True)
        inside.copy_(x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    return out


def normalize(frames: torch.Tensor, mean=IMAGE_MEAN, std=IMAGE_STD) -> torch.Tensor:
    """uint8 frames (B, H, W, 3) RGB on any device -> float input (B, 3, H, W), 0..1 then mean/std."""
    import torch  # here: decode actors import this module for Letterbox and need no torch (~300 MB, seconds each)

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (B, H, W, 3), got {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
