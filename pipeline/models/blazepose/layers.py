"""Building blocks of MediaPipe's BlazePose networks, in plain torch (NCHW).

The graphs were trained in TensorFlow, so two TF conventions are kept where they change results: a stride-2
depthwise conv with TF's SAME padding pads one pixel right and below only (`same_pad`), and depth-to-space orders
channels as TF does, not as `pixel_shuffle` does (`depth_to_space`). Every conv carries a bias (the graphs have their
BatchNorms folded in) and activations are ReLU6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function_unary


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) as TF's SAME does for this kernel and stride: the odd pixel goes right and below."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """TF's depth_to_space on NCHW: (B, b*b*C, H, W) -> (B, C, H*b, W*b), channel (i*b + j)*C + c -> row i, col j.

    (torch's pixel_shuffle reads channel c*b*b + i*b + j instead.)
    """
    if has_torch_function_unary(x):  # lets the weight converter follow this op through the graph
        return handle_torch_function(depth_to_space, (x,), x, block)
    b, channels, h, w = x.shape
    c = channels // (block * block)
    x = x.view(b, block, block, c, h, w)                                 # (B, i, j, C, H, W)
    return x.permute(0, 3, 4, 1, 5, 2).reshape(b, c, h * block, w * block)


class Stem(nn.Module):
    """3x3 stride-2 conv (ReLU6), then a depthwise-separable conv down to `out_channels` (linear)."""

    def __init__(self, out_channels: int, width: int = 24):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pointwise = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(F.relu6(self.depthwise(F.relu6(self.conv(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), k x k depthwise (ReLU6), 1x1 project (linear); the input is added
    back when the block keeps the shape."""

    def __init__(self, in_channels: int, expanded: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.expand = nn.Conv2d(in_channels, expanded, 1)
        self.depthwise = nn.Conv2d(expanded, expanded, kernel, stride=stride, padding=kernel // 2, groups=expanded)
        self.project = nn.Conv2d(expanded, out_channels, 1)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(F.relu6(self.depthwise(F.relu6(self.expand(x)))))
        return x + y if self.residual else y


class SeparableConv(nn.Module):
    """3x3 depthwise (ReLU6 when `depthwise_relu`), then 1x1 pointwise to `out_channels`, ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, depthwise_relu: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        self.depthwise_relu = depthwise_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(x)
        return F.relu6(self.pointwise(F.relu6(x) if self.depthwise_relu else x))


class BlazeBlock(nn.Module):
    """ReLU6(shortcut + pointwise(depthwise(x))). At stride 2 the depthwise pads as TF's SAME and the shortcut is a
    2x2 max pool, zero-padded in channels when the block widens."""

    def __init__(self, in_channels: int, out_channels: int | None = None, stride: int = 1,
                 depthwise_relu: bool = True):
        super().__init__()
        out_channels = out_channels or in_channels
        self.stride, self.extra_channels, self.depthwise_relu = stride, out_channels - in_channels, depthwise_relu
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1 if stride == 1 else 0,
                                   groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x if self.stride == 1 else same_pad(x, 3, self.stride))
        y = self.pointwise(F.relu6(y) if self.depthwise_relu else y)
        shortcut = x if self.stride == 1 else F.max_pool2d(x, 2, stride=2)
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu6(shortcut + y)


class Float32(nn.Module):
    """Runs `module` in float32 even under autocast: an output in pixels (up to 256) needs more than bf16's 8-bit
    mantissa, which rounds it to whole pixels."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self.module(x.float())
        return self.module(x)


Block = tuple[int, int, int, int]  # InvertedResidual (expanded, out_channels, kernel, stride)


class Encoder(nn.Module):
    """Stem, then stages of inverted residuals (each halves the resolution), then a 1x1 expansion and a 3x3
    depthwise on the last stage (both ReLU6). Returns the outputs of the stem, of each stage but the last, and of
    that expansion: one map per stride, 2 to 32."""

    def __init__(self, stem_channels: int, stages: tuple[tuple[Block, ...], ...]):
        super().__init__()
        self.stem = Stem(stem_channels)
        channels, modules = stem_channels, []
        for stage in stages:
            blocks = []
            for expanded, out, kernel, stride in stage:
                blocks.append(InvertedResidual(channels, expanded, out, kernel, stride))
                channels = out
            modules.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(modules)
        self.head_channels = stages[-1][-1][0]
        self.expand = nn.Conv2d(channels, self.head_channels, 1)
        self.depthwise = nn.Conv2d(self.head_channels, self.head_channels, 3, padding=1, groups=self.head_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]                                             # (B, C0, S/2, S/2)
        for stage in self.stages:
            features.append(stage(features[-1]))                              # (B, Ci, S/2^(i+1), ...)
        features[-1] = F.relu6(self.depthwise(F.relu6(self.expand(features[-1]))))  # (B, E, S/32, S/32)
        return features
