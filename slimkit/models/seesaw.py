"""Seesaw-Net (Zhang, arXiv 1905.03672): MobileNetV2-style blocks with UNEVEN point-wise group convolution.

A 1x1 conv is split into two groups of 1/4 and 3/4 of the channels (cost 1/16 + 9/16 = 0.625 of a dense 1x1).
Two cross-group information-flow patterns (see ../shared/research/methods.md, "Seesaw-Net"):

* ``pattern="shuffle"`` - from the authors' re-implementation (cvtower/SeesawNet_pytorch): a channel shuffle
  (2 groups) after the first uneven 1x1; both 1x1s split 1/4 : 3/4.
* ``pattern="seesaw"`` - no permutation at all: the second 1x1 uses the mirrored 3/4 : 1/4 split, so each of its
  groups straddles both groups of the first 1x1. This is OUR reading of "without any channel permute"; the
  paper's figures were not checked.

Blocks with >= 160 input channels use even g=2 point-wise convs with a channel shuffle in both patterns (as in
the authors' code): even groups without a permutation would never exchange information.
"""
import torch
from torch import nn

from slimkit.models._registry import register_model
from slimkit.models.mobilenet_v2 import PooledClassifier, conv_bn_act, make_divisible

# [t, c, n, s]: MobileNetV2/IGCV3 layout; "full" doubles the depth (like IGCV3-D), "half" = MobileNetV2 depths.
STAGES = [(1, 16, 1, 1), (6, 24, 4, 2), (6, 32, 6, 2), (6, 64, 8, 2), (6, 96, 6, 1), (6, 160, 6, 2), (6, 320, 1, 1)]
HALF_DEPTHS = [1, 2, 3, 4, 3, 3, 1]


class UnevenGroupConv1x1(nn.Module):
    """1x1 conv in two groups: the first ``cin/4`` channels map to ``cout/4``, the rest to ``3 cout/4``.

    ``mirror=True`` swaps the split to 3/4 : 1/4. Both channel counts must be divisible by 4.
    """

    def __init__(self, cin, cout, mirror=False):
        super().__init__()
        if cin % 4 or cout % 4:
            raise ValueError(f"uneven group conv needs channel counts divisible by 4, got {cin} -> {cout}")
        small_in, small_out = cin // 4, cout // 4
        if mirror:
            self.splits = (cin - small_in, small_in)
            outs = (cout - small_out, small_out)
        else:
            self.splits = (small_in, cin - small_in)
            outs = (small_out, cout - small_out)
        self.group_a = nn.Conv2d(self.splits[0], outs[0], 1, bias=False)
        self.group_b = nn.Conv2d(self.splits[1], outs[1], 1, bias=False)

    def forward(self, x):
        a, b = torch.split(x, self.splits, dim=1)
        return torch.cat([self.group_a(a), self.group_b(b)], dim=1)


class ChannelShuffle(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class SeesawBlock(nn.Module):
    """Uneven block (in_channels < 160): uneven 1x1 (no ReLU) -> BN [-> shuffle] -> DW 3x3 -> BN -> ReLU6
    -> uneven 1x1 -> BN (linear bottleneck) [+ residual]."""

    def __init__(self, cin, cout, stride, expand, pattern="shuffle"):
        super().__init__()
        if pattern not in ("shuffle", "seesaw"):
            raise ValueError(f"pattern must be 'shuffle' or 'seesaw', got {pattern!r}")
        hidden = cin * expand
        self.expand = UnevenGroupConv1x1(cin, hidden)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.shuffle = ChannelShuffle(2) if pattern == "shuffle" else nn.Identity()
        self.dw = conv_bn_act(hidden, hidden, 3, stride, groups=hidden)
        self.project = UnevenGroupConv1x1(hidden, cout, mirror=pattern == "seesaw")
        self.bn2 = nn.BatchNorm2d(cout)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.bn2(self.project(self.dw(self.shuffle(self.bn1(self.expand(x))))))
        return x + y if self.use_res else y


class EvenGroupBlock(nn.Module):
    """Block for >= 160 input channels: g=2 1x1 -> BN -> shuffle -> DW 3x3 -> BN -> ReLU6 -> g=2 1x1 -> BN."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Conv2d(cin, hidden, 1, groups=2, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.shuffle = ChannelShuffle(2)
        self.dw = conv_bn_act(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Conv2d(hidden, cout, 1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.bn2(self.project(self.dw(self.shuffle(self.bn1(self.expand(x))))))
        return x + y if self.use_res else y


class SeesawNet(PooledClassifier):
    model_name = "seesaw_net"

    def __init__(self, num_classes=10, stem="cifar", pattern="shuffle", depth="full", width_mult=1.0, dropout=0.2):
        super().__init__()
        if depth not in ("full", "half"):
            raise ValueError(f"depth must be 'full' or 'half', got {depth!r}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.num_classes = num_classes
        cifar = stem == "cifar"
        cin = make_divisible(32 * width_mult)
        layers = [conv_bn_act(3, cin, 3, 1 if cifar else 2)]
        for i, (t, c, n, s) in enumerate(STAGES):
            n = HALF_DEPTHS[i] if depth == "half" else n
            if cifar and i in (1, 5):
                s = 1  # 32x32 inputs: no down-sampling in the stem stage pair and the 160 stage (authors' CIFAR code)
            cout = make_divisible(c * width_mult)
            for j in range(n):
                stride = s if j == 0 else 1
                block = (SeesawBlock(cin, cout, stride, t, pattern) if cin < 160
                         else EvenGroupBlock(cin, cout, stride, t))
                layers.append(block)
                cin = cout
        layers.append(conv_bn_act(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))


@register_model(input_size=(3, 32, 32))
def seesaw_net(num_classes=10, stem="cifar", pattern="shuffle", depth="half", width_mult=1.0):
    """Seesaw-Net, uneven 1/4:3/4 group convs; pattern 'shuffle' or 'seesaw' (no permutation)."""
    return SeesawNet(num_classes, stem, pattern, depth, width_mult)


@register_model(input_size=(3, 224, 224))
def seesaw_net_imagenet(num_classes=1000, pattern="shuffle", depth="full", width_mult=1.0):
    """Seesaw-Net 1.0 with the ImageNet stem (224x224)."""
    return SeesawNet(num_classes, "imagenet", pattern, depth, width_mult)
