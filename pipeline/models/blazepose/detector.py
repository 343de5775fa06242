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

    def forward(self, x: torch.Tensor, graph_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`graph_order`: the graph's own ops, which the weight converter follows; otherwise the same function without
        moving a pixel for the depth-to-space (`depthwise_on_depth_to_space`)."""
        b = x.shape[0]
        if graph_order:
            x = depth_to_space(x, 2)                                          # (B, C/4, 2H, 2W)
            scores, boxes = self.score(self.score_depthwise(x)), self.box(self.box_depthwise(x))
        else:
            scores = self.score(depthwise_on_depth_to_space(x, self.score_depthwise))
            boxes = self.box(depthwise_on_depth_to_space(x, self.box_depthwise))
        return scores.permute(0, 2, 3, 1).reshape(b, -1, 1), boxes.permute(0, 2, 3, 1).reshape(b, -1, 12)


def depthwise_on_depth_to_space(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(depth_to_space(x, 2))` for a 3x3 depthwise `conv` of stride 2 and padding 1, computed on x as it lies.

    Each of the 4 channel blocks of x (B, 4C, H, W) is one sub-grid (i, j) of the upsampled map, and the stride-2
    conv reads sub-grid (i, j) with its taps (2u + i - 1, 2v + j - 1), u, v in {0, 1}, at rows and columns y - 1 + u,
    x - 1 + v: a 2x2 depthwise conv per block (padded 1 above and left), summed over the blocks. No transpose copies
    the map.
    """
    b, channels, h, w = x.shape
    c = channels // 4
    taps = nn.functional.pad(conv.weight, (1, 0, 1, 0))                      # (C, 1, 4, 4); row/col 0: no tap
    kernel = torch.cat([taps[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)])  # (4C, 1, 2, 2), blocks 2i + j
    bias = nn.functional.pad(conv.bias, (0, 3 * c))                          # added once, in block 0
    y = nn.functional.conv2d(nn.functional.pad(x, (1, 0, 1, 0)), kernel, bias, groups=channels)
    return y.reshape(b, 4, c, h, w).sum(1)                                    # (B, C, H, W)


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

    def forward(self, x: torch.Tensor, graph_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 224, 224) in [-1, 1] -> score logits (B, 2254, 1), boxes (B, 2254, 12) in input pixels.

        `graph_order`: the graph's own order of ops, which the weight converter follows (`pipeline.models.blazepose.
        convert`); otherwise the same function in fewer operations (`lateral`, `DetectorHead`).
        """
        _, _, f8, f16, f32 = self.encoder(x)                                  # (B, 40, 28, 28) ... (B, 1152, 7, 7)
        p16 = self.blocks16(self.skip16(f16) + lateral(self.lateral16, f32, graph_order))   # (B, 192, 14, 14)
        p8 = self.blocks8(self.skip8(f8) + lateral(self.lateral8, p16, graph_order))        # (B, 96, 28, 28)
        (s8, b8), (s16, b16), (s32, b32) = (head(p, graph_order) for head, p in
                                            ((self.head8, p8), (self.head16, p16), (self.head32, f32)))
        return torch.cat([s8, s16, s32], dim=1), torch.cat([b8, b16, b32], dim=1)


def lateral(conv: nn.Conv2d, x: torch.Tensor, graph_order: bool) -> torch.Tensor:
    """ReLU6 of the 1x1 `conv` of `x` upsampled x2 (bilinear). Unless `graph_order`, the conv runs first, on a quarter
    of the pixels: the same function, as bilinear weights sum to 1 and so commute with a 1x1 conv and its bias."""
    def up(t: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

    return nn.functional.relu6(conv(up(x)) if graph_order else up(conv(x)))


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
