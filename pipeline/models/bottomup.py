"""PoseNet: a small encoder-decoder that predicts keypoint heatmaps and part affinity fields at stride 4.

Shape letters: B = images, H, W = input size (pixels), K = keypoint types, L = limbs (`SKELETON` order),
C = channels. Outputs are at stride 4: (H/4, W/4), heatmap pixel h sits at input pixel (h + 0.5) * 4 - 0.5.

Layout (default config, 256x256 input):
    stem        two 3x3 stride-2 convs                         -> stride 4,  C = width
    encoder     ResNet basic-block stages at strides 4..32     -> C = width * (1, 2, 4, 8)
    decoder     U-Net style: 1x1 to the skip's channels, upsample, add the skip, 3x3 conv; up to stride 4
    neck        concat(stride-4 and upsampled stride-8 decoder maps) -> 1x1 -> feature_channels
    heads       heatmaps (K) and PAFs (2L): a few depthwise-separable 3x3 convs + a 1x1
The stride-32 stage gives a receptive field larger than the input, so one person filling the frame is seen whole.
The heads are depthwise-separable because full 3x3 convs over 128 channels at stride 4 would cost more than the
whole encoder. Only conv, BatchNorm, ReLU, nearest upsampling, add and concat are used, so bf16/fp16 autocast,
channels_last and torch.compile all apply. Outputs are raw (no sigmoid): heatmaps are trained with MSE against
Gaussians that peak at 1.0 and PAFs with MSE against unit vectors.
Input is an RGB float image normalised by the caller (the model does not normalise).
"""

import logging
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.pose.keypoints import FLIP_INDEX, FLIP_LIMB_INDEX, FLIP_LIMB_SIGN, NUM_KEYPOINTS, NUM_LIMBS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    input_size: int = 256  # square input, pixels (the net also runs on other sizes that are multiples of 4)
    num_keypoints: int = NUM_KEYPOINTS  # heatmap channels, order of pipeline/pose/keypoints.py
    num_limbs: int = NUM_LIMBS  # PAF head has 2 * num_limbs channels (x, y per limb, SKELETON order)
    width: int = 24  # channels of the first stage; stage i has width * 2**i
    stage_blocks: tuple[int, ...] = (2, 6, 8, 4)  # residual blocks per stage at strides 4, 8, 16, 32, ...
    feature_channels: int = 96  # channels of the stride-4 feature map
    head_channels: int = 48  # hidden channels of each head
    head_convs: int = 2  # depthwise-separable 3x3 convs per head before its 1x1 output

    def __post_init__(self) -> None:
        # tuples survive JSON as lists; normalise so equality and hashing work after from_dict
        object.__setattr__(self, "stage_blocks", tuple(int(n) for n in self.stage_blocks))
        if self.input_size < 4 or self.input_size % 4:
            raise ValueError(f"expected input_size a positive multiple of 4 (output stride), got {self.input_size}")
        if len(self.stage_blocks) < 1 or min(self.stage_blocks) < 1:
            raise ValueError(f"expected stage_blocks of one or more positive counts, got {self.stage_blocks}")
        for name in ("num_keypoints", "num_limbs", "width", "feature_channels", "head_channels", "head_convs"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """JSON-friendly dict (tuples become lists)."""
        d = asdict(self)
        d["stage_blocks"] = list(self.stage_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig keys {unknown}; expected a subset of {sorted(known)} "
                "(was the checkpoint written by a newer or different model?)"
            )
        return cls(**d)


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def separable_conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1: a 3x3 receptive field at about 1/9 of a full conv's cost."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs plus a shortcut (1x1 projection when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn_relu(in_ch, out_ch, 3, stride)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        nn.init.zeros_(self.bn2.weight)  # each block starts as identity: stabler early training
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class UpFuse(nn.Module):
    """Decoder step: bring a coarse map to the skip's channels and size, add the skip, mix with a 3x3 conv."""

    def __init__(self, coarse_ch: int, skip_ch: int):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(coarse_ch, skip_ch, 1, bias=False), nn.BatchNorm2d(skip_ch))
        self.mix = conv_bn_relu(skip_ch, skip_ch)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.reduce(coarse), size=skip.shape[-2:], mode="nearest")  # (B, C_skip, h, w)
        return self.mix(up + skip)


class Head(nn.Module):
    """A few separable 3x3 convs, then a 1x1 to the output channels (raw values, no activation)."""

    def __init__(self, in_ch: int, hidden_ch: int, out_ch: int, num_convs: int):
        super().__init__()
        layers = [separable_conv_bn_relu(in_ch if i == 0 else hidden_ch, hidden_ch) for i in range(num_convs)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(hidden_ch, out_ch, 1)
        nn.init.normal_(self.out.weight, std=0.001)  # start near the all-zero map, the background of both targets
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class PoseNet(nn.Module):
    stride: int = 4  # output stride of heatmaps, PAFs and features

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        channels = [config.width * 2**i for i in range(len(config.stage_blocks))]  # per stage, strides 4, 8, ...
        stem_ch = max(config.width // 2, 1)
        self.stem = nn.Sequential(conv_bn_relu(3, stem_ch, 3, 2), conv_bn_relu(stem_ch, channels[0], 3, 2))
        self.stages = nn.ModuleList()
        for i, blocks in enumerate(config.stage_blocks):
            in_ch = channels[max(i - 1, 0)]
            layers = [BasicBlock(in_ch, channels[i], stride=1 if i == 0 else 2)]
            layers += [BasicBlock(channels[i], channels[i]) for _ in range(blocks - 1)]
            self.stages.append(nn.Sequential(*layers))
        # decoder steps from coarse to fine: ups[j] fuses into stage len-2-j
        self.ups = nn.ModuleList(UpFuse(channels[i + 1], channels[i]) for i in reversed(range(len(channels) - 1)))
        neck_in = channels[0] + (channels[1] if len(channels) > 1 else 0)
        self.neck = conv_bn_relu(neck_in, config.feature_channels, kernel=1)
        self.heatmap_head = Head(config.feature_channels, config.head_channels, config.num_keypoints, config.head_convs)
        self.paf_head = Head(config.feature_channels, config.head_channels, 2 * config.num_limbs, config.head_convs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m not in (self.heatmap_head.out, self.paf_head.out):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised image -> (B, feature_channels, H/4, W/4)."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"expected images of shape (B, 3, H, W) with H, W multiples of 4, got {tuple(x.shape)}")
        skips = []
        x = self.stem(x)  # (B, width, H/4, W/4)
        for stage in self.stages:
            x = stage(x)  # (B, width * 2**i, H/2**(i+2), W/2**(i+2))
            skips.append(x)
        decoded = [skips[-1]]
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            decoded.append(up(decoded[-1], skip))  # coarse to fine, ends at stride 4
        fine = decoded[-1]  # (B, width, H/4, W/4)
        if len(decoded) > 1:  # add stride-8 context alongside the stride-4 detail
            coarser = F.interpolate(decoded[-2], size=fine.shape[-2:], mode="nearest")  # (B, 2*width, H/4, W/4)
            fine = torch.cat([fine, coarser], dim=1)  # (B, 3*width, H/4, W/4)
        return self.neck(fine)  # (B, feature_channels, H/4, W/4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> raw heatmaps (B, K, H/4, W/4) and PAFs (B, 2L, H/4, W/4)."""
        features = self.forward_features(x)  # (B, feature_channels, H/4, W/4)
        return self.heatmap_head(features), self.paf_head(features)


def unmirror_outputs(heatmaps: torch.Tensor, pafs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs for a mirrored image -> outputs for the image itself: columns reversed, left and right keypoint
    channels swapped, limbs swapped (`FLIP_LIMB_INDEX`), PAF x negated and, for limbs whose mirror runs the other
    way, the whole vector negated. Output pixels h and w - 1 - h are mirror images (centres at (h + 0.5) * 4 - 0.5).
    """
    heatmaps = heatmaps.flip(-1)[:, list(FLIP_INDEX)]                        # (B, K, h, w)
    pafs = pafs.flip(-1).unflatten(1, (-1, 2))[:, list(FLIP_LIMB_INDEX)]     # (B, L, 2, h, w)
    sign = torch.tensor(FLIP_LIMB_SIGN, dtype=pafs.dtype, device=pafs.device)[:, None] * torch.tensor(
        [-1.0, 1.0], dtype=pafs.dtype, device=pafs.device)                  # (L, 2)
    return heatmaps, (pafs * sign[None, :, :, None, None]).flatten(1, 2)


def forward_flip_averaged(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip test: the mean of the outputs for the image and (mapped back) for its mirror image, at twice the cost.

    The network then has to agree with itself on which side is left, which averages away part of its left/right
    confusions and localisation noise (models/posepipe-synthetic.md has the measured gain).
    """
    heatmaps, pafs = model(x)                                                 # (B, K, h, w), (B, 2L, h, w)
    mirrored = unmirror_outputs(*model(x.flip(-1)))
    return (heatmaps + mirrored[0]) / 2, (pafs + mirrored[1]) / 2


def deepen(model: PoseNet, stage_blocks: tuple[int, ...]) -> PoseNet:
    """A copy of `model` with more residual blocks per stage that computes the same function.

    The added blocks go at the end of their stage and start as the identity (a block's last BatchNorm weight is
    zero-initialised and its input is already non-negative), so fine-tuning a deeper net starts where the trained
    shallower one stopped instead of from scratch (Net2Net-style growth). Blocks at the low-resolution stages add
    context for little compute (stage_blocks (1, 2, 2, 1) -> (1, 3, 4, 2) doubles the parameters of the default net
    and cost 2% of its training speed on a 2-core CPU).
    """
    old = model.config
    new_blocks = tuple(int(n) for n in stage_blocks)
    if len(new_blocks) != len(old.stage_blocks) or any(n < o for n, o in zip(new_blocks, old.stage_blocks)):
        raise ValueError(f"can only add blocks to the existing stages: {old.stage_blocks} -> {new_blocks}")
    grown = PoseNet(ModelConfig(**{**old.to_dict(), "stage_blocks": new_blocks})).to(next(model.parameters()).device)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    added = [key for key in missing if not _in_added_block(key, old.stage_blocks)]
    if added or unexpected:  # a programming error: the layouts of the two nets disagree
        raise RuntimeError(f"deepen: state dicts do not line up (missing {added}, unexpected {unexpected})")
    return grown.train(model.training)


def _in_added_block(key: str, old_blocks: tuple[int, ...]) -> bool:
    """Whether a state-dict key such as 'stages.2.3.conv1.0.weight' belongs to a block `deepen` added."""
    parts = key.split(".")
    return parts[0] == "stages" and int(parts[2]) >= old_blocks[int(parts[1])]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
