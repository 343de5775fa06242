"""BlazePose GHUM landmark networks (MediaPipe `pose_landmark_{lite,full,heavy}.tflite`) as one torch module.

Input (B, 3, 256, 256) RGB in [0, 1]: a square crop around one person, upright. Outputs, as the graphs name them:

    landmarks   (B, 39, 5)   x, y (crop pixels), z, visibility and presence logits; 33 BlazePose landmarks, then 6
                             auxiliary points (33/34: the alignment points that define the next crop)
    presence    (B, 1)       probability that a person is in the crop
    heatmaps    (B, 39, 64, 64)  one map per landmark, logits (stride 4)
    world       (B, 39, 3)   metric 3D landmarks
    segmentation (B, 1, 256, 256) person mask logits, only when asked (its decoder runs at full resolution)

The three variants share the architecture and differ in widths and depths (`VARIANTS`): an inverted-residual
encoder, a top-down decoder to stride 4 for the heatmaps (and on to full resolution for the mask), and a regression
branch of BlazeBlocks down to 2x2 for the landmarks. Heavy feeds that branch from the decoder (stride 4, with encoder
features added at strides 8 to 32); lite and full from the encoder's last map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.blazepose.layers import BlazeBlock, Block, Encoder, SeparableConv

INPUT_SIZE = 256
NUM_LANDMARKS = 39          # 33 body landmarks + 6 auxiliary
HEATMAP_STRIDE = 4


@dataclass(frozen=True)
class LandmarkConfig:
    stem: int                                   # channels after the stem (stride 2)
    encoder: tuple[tuple[Block, ...], ...]      # four stages of (expanded, out, kernel, stride), strides 4 to 32
    decoder: int                                # channels of the top-down path (heatmaps are read from it)
    regression: tuple[tuple[int, int], ...]     # per stride-2 BlazeBlock: (channels, further blocks)
    regression_from_decoder: bool               # heavy: start at stride 4 from the decoder; else from stride 32


VARIANTS = {
    "lite": LandmarkConfig(
        stem=8,
        encoder=(((32, 16, 3, 2), (96, 16, 3, 1)),
                 ((96, 24, 5, 2), (144, 24, 5, 1)),
                 ((144, 40, 3, 2), (240, 40, 3, 1), (240, 40, 3, 1), (240, 56, 5, 1), (336, 56, 5, 1),
                  (336, 56, 5, 1)),
                 ((336, 96, 5, 2), (576, 96, 5, 1), (576, 96, 5, 1), (576, 96, 5, 1))),
        decoder=32, regression=((192, 2), (192, 3)), regression_from_decoder=False),
    "full": LandmarkConfig(
        stem=16,
        encoder=(((64, 24, 3, 2), (144, 24, 3, 1)),
                 ((144, 32, 5, 2), (192, 32, 5, 1)),
                 ((192, 64, 3, 2), (384, 64, 3, 1), (384, 64, 3, 1), (384, 88, 5, 1), (528, 88, 5, 1),
                  (528, 88, 5, 1)),
                 ((528, 144, 5, 2),) + ((864, 144, 5, 1),) * 3),
        decoder=48, regression=((288, 4), (288, 5)), regression_from_decoder=False),
    "heavy": LandmarkConfig(
        stem=24,
        encoder=(((96, 32, 3, 2), (128, 32, 3, 1), (192, 32, 3, 1), (192, 32, 3, 1)),
                 ((192, 56, 5, 2),) + ((336, 56, 5, 1),) * 3,
                 ((336, 112, 3, 2),) + ((672, 112, 3, 1),) * 5 + ((672, 160, 5, 1),) + ((960, 160, 5, 1),) * 5,
                 ((960, 272, 5, 2),) + ((1632, 272, 5, 1),) * 7),
        decoder=48, regression=((96, 6), (192, 7), (288, 7), (288, 7), (288, 7)), regression_from_decoder=True),
}


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class LandmarkNet(nn.Module):
    def __init__(self, config: LandmarkConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.stem, config.encoder)
        widths = [config.stem] + [stage[-1][1] for stage in config.encoder[:-1]] + [self.encoder.head_channels]
        # decoder: one projection per encoder resolution (strides 2 ... 32), summed top-down from stride 32 to 4
        self.skips = nn.ModuleList(
            [BlazeBlock(8) if widths[0] == 8 else SeparableConv(widths[0], 8)]
            + [SeparableConv(w, config.decoder) for w in widths[1:]])
        self.heatmap_head = nn.Conv2d(config.decoder, NUM_LANDMARKS, 1)
        # segmentation: on from stride 4 to full resolution, 8 channels
        self.mask_in = SeparableConv(config.decoder, 8)
        self.mask_blocks2 = nn.Sequential(BlazeBlock(8), BlazeBlock(8))
        self.mask_blocks1 = nn.Sequential(BlazeBlock(8), BlazeBlock(8))
        self.mask_head = nn.Conv2d(8, 1, 3, padding=1)
        # regression: stride-2 BlazeBlock stages from stride 4 (heavy) or 32 down to 2x2; encoder features of the same
        # stride are projected and added at strides 8, 16 and 32
        channels = config.decoder if config.regression_from_decoder else config.regression[0][0]
        stages, skips = [], []
        for stride, (width, blocks) in enumerate(config.regression, start=3 if config.regression_from_decoder else 6):
            stages.append(nn.Sequential(BlazeBlock(channels, width, stride=2), *[BlazeBlock(width)
                                                                                for _ in range(blocks)]))
            channels = width
            if stride <= 5:                                                   # output at stride 2^stride <= 32
                skips.append(SeparableConv(widths[stride - 1], width))
        self.regression_stages = nn.ModuleList(stages)
        self.regression_skips = nn.ModuleList(skips)
        if not config.regression_from_decoder:                               # the branch's input at stride 32
            self.regression_in = SeparableConv(widths[-1], channels)
        self.landmarks_head = nn.Conv2d(channels, NUM_LANDMARKS * 5, 2)
        self.world_head = nn.Conv2d(channels, NUM_LANDMARKS * 3, 2)
        self.presence_head = nn.Conv2d(channels, 1, 2)

    def forward(self, x: torch.Tensor, segmentation: bool = False) -> dict[str, torch.Tensor]:
        """(B, 3, 256, 256) RGB in [0, 1] -> the outputs listed in the module docstring."""
        features = self.encoder(x)                                            # strides 2, 4, 8, 16, 32
        skips = [skip(f) for skip, f in zip(self.skips, features)]
        y = skips[-1]                                                         # (B, D, 8, 8)
        for skip in reversed(skips[1:-1]):
            y = upsample(y) + skip                                            # ... (B, D, 64, 64)
        out = {"heatmaps": self.heatmap_head(y)}                              # (B, 39, 64, 64)
        if segmentation:
            m = self.mask_blocks2(upsample(self.mask_in(y)) + skips[0])       # (B, 8, 128, 128)
            out["segmentation"] = self.mask_head(self.mask_blocks1(upsample(m)))  # (B, 1, 256, 256)
        r = y if self.config.regression_from_decoder else self.regression_in(features[-1])
        for i, stage in enumerate(self.regression_stages):
            r = stage(r)
            if i < len(self.regression_skips):
                r = r + self.regression_skips[i](features[len(features) - len(self.regression_skips) + i])
        b = x.shape[0]
        out["landmarks"] = self.landmarks_head(r).reshape(b, NUM_LANDMARKS, 5)   # (B, 39, 5)
        out["world"] = self.world_head(r).reshape(b, NUM_LANDMARKS, 3)           # (B, 39, 3)
        out["presence"] = torch.sigmoid(self.presence_head(r)).reshape(b, 1)     # (B, 1)
        return out
