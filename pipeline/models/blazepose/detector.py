"""BlazePose person detector (MediaPipe `pose_detection.tflite`) as a torch module, and the anchors it predicts on.

Input (B, 3, 224, 224) RGB scaled to [-1, 1]. For each of 2254 SSD anchors it predicts a score logit and 12 values:
box centre x, y, width, height, then 4 keypoints (x, y), in input pixels relative to the anchor centre. MediaPipe's
graph decodes them with the anchors of `ssd_anchors` below (`pose_detection_cpu.pbtxt`: 5 layers, strides 8, 16, 32,
32, 32, fixed anchor size, offset 0.5). The box is a face-sized square; the person's geometry is in the keypoints:
0 mid-hip, 1 a point above the head (mid-hip -> 1 gives scale and rotation), 2 mid-shoulder, 3 a point above it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.models.blazepose.layers import BlazeBlock, Encoder, SeparableConv, depth_to_space

INPUT_SIZE = 224
NUM_ANCHORS = 2254
ENCODER = (
    ((64, 24, 3, 2), (144, 24, 3, 1)),                                        # 56x56
    ((144, 40, 5, 2), (240, 40, 5, 1)),                                       # 28x28
    ((240, 80, 3, 2), (480, 80, 3, 1), (480, 80, 3, 1), (480, 112, 5, 1), (672, 112, 5, 1), (672, 112, 5, 1)),
    ((672, 192, 5, 2), (1152, 192, 5, 1), (1152, 192, 5, 1), (1152, 192, 5, 1)),  # 7x7
)


class DetectorHead(nn.Module):
    """Depth-to-space x2, then per output a stride-2 depthwise conv and a 1x1 conv: scores (B, N, 1) and boxes
    (B, N, 12), N = H * W * anchors in (row, col, anchor) order."""

    def __init__(self, channels: int, anchors: int):
        super().__init__()
        c = channels // 4
        self.score_depthwise = nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c)
        self.score = nn.Conv2d(c, anchors, 1)
        self.box_depthwise = nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c)
        self.box = nn.Conv2d(c, anchors * 12, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = depth_to_space(x, 2)                                              # (B, C/4, 2H, 2W)
        b = x.shape[0]
        scores = self.score(self.score_depthwise(x)).permute(0, 2, 3, 1).reshape(b, -1, 1)  # (B, H*W*A, 1)
        boxes = self.box(self.box_depthwise(x)).permute(0, 2, 3, 1).reshape(b, -1, 12)      # (B, H*W*A, 12)
        return scores, boxes


class PersonDetector(nn.Module):
    """Encoder (stride 32), a top-down path back to strides 16 and 8, and SSD heads at strides 8, 16 and 32."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder(16, ENCODER)
        self.skip8 = SeparableConv(40, 96, depthwise_relu=False)
        self.skip16 = SeparableConv(112, 192, depthwise_relu=False)
        self.lateral16 = nn.Conv2d(1152, 192, 1)
        self.blocks16 = nn.Sequential(BlazeBlock(192, depthwise_relu=False), BlazeBlock(192, depthwise_relu=False))
        self.lateral8 = nn.Conv2d(192, 96, 1)
        self.blocks8 = nn.Sequential(BlazeBlock(96, depthwise_relu=False), BlazeBlock(96, depthwise_relu=False))
        self.head8, self.head16, self.head32 = DetectorHead(96, 2), DetectorHead(192, 2), DetectorHead(1152, 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 224, 224) in [-1, 1] -> score logits (B, 2254, 1), boxes (B, 2254, 12) in input pixels."""
        _, _, f8, f16, f32 = self.encoder(x)                                  # (B, 40, 28, 28) ... (B, 1152, 7, 7)
        up = nn.functional.interpolate(f32, scale_factor=2, mode="bilinear", align_corners=False)
        p16 = self.blocks16(self.skip16(f16) + nn.functional.relu6(self.lateral16(up)))      # (B, 192, 14, 14)
        up = nn.functional.interpolate(p16, scale_factor=2, mode="bilinear", align_corners=False)
        p8 = self.blocks8(self.skip8(f8) + nn.functional.relu6(self.lateral8(up)))           # (B, 96, 28, 28)
        (s8, b8), (s16, b16), (s32, b32) = self.head8(p8), self.head16(p16), self.head32(f32)
        return torch.cat([s8, s16, s32], dim=1), torch.cat([b8, b16, b32], dim=1)


def ssd_anchors(input_size: int = INPUT_SIZE, strides: tuple[int, ...] = (8, 16, 32, 32, 32)) -> np.ndarray:
    """Anchor centres (2254, 2) in [0, 1], in the order of the detector's outputs.

    MediaPipe's SsdAnchorsCalculator with fixed_anchor_size: layers of the same stride share one grid, each layer
    adds 2 anchors per cell (aspect ratio 1 and the interpolated scale), all centred on the cell (offset 0.5).
    """
    centres = []
    layer = 0
    while layer < len(strides):
        stride, per_cell = strides[layer], 0
        while layer < len(strides) and strides[layer] == stride:
            per_cell += 2
            layer += 1
        cells = int(np.ceil(input_size / stride))
        y, x = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        grid = np.stack([x, y], axis=-1).reshape(-1, 1, 2)                    # (cells*cells, 1, 2)
        centres.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)
