"""EfficientNet-B0..B7 (Tan & Le 2019) built from ONE B0 block table by compound scaling.

depth d = ALPHA**phi, width w = BETA**phi, resolution r = GAMMA**phi (ALPHA * BETA**2 * GAMMA**2 ~= 2, so FLOPs
grow ~2**phi). The released B1..B7 use hand-rounded (width, depth, resolution, dropout) values, listed in
``PUBLISHED``; ``efficientnet(phi=...)`` builds the exact compound-scaled network for any phi.
"""
import math

import torch
from torch import nn

from slimkit.models._registry import register_model
from slimkit.models.mobilenet_v2 import PooledClassifier

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
BASE_RESOLUTION = 224

# B0 stages: (expand ratio, kernel, first stride, out channels, repeats); stem 32, head 1280, SE 0.25, SiLU.
B0_BLOCKS = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]

# name: (width, depth, resolution, dropout) - tensorflow/tpu efficientnet_builder.py
PUBLISHED = {
    "b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5),
}


def compound_coefficients(phi):
    """(width, depth, resolution) multipliers for compound coefficient ``phi``."""
    return BETA ** phi, ALPHA ** phi, int(round(BASE_RESOLUTION * GAMMA ** phi))


def round_filters(channels, width, divisor=8):
    """Scale channels by ``width``, round to a multiple of 8, never below 90% of the scaled value."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


def round_repeats(repeats, depth):
    return int(math.ceil(depth * repeats))


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


def _conv_bn(cin, cout, k=1, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=1e-3)]
    return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expand, se_ratio=0.25, drop_path=0.0):
        super().__init__()
        hidden = cin * expand
        self.expand = _conv_bn(cin, hidden) if expand != 1 else nn.Identity()
        self.dw = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.se = SqueezeExcite(hidden, max(1, int(cin * se_ratio)))
        self.project = _conv_bn(hidden, cout, act=False)
        self.use_res = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        if not self.use_res:
            return y
        if self.training and self.drop_path > 0:  # stochastic depth: drop the whole branch per sample
            keep = torch.rand(y.shape[0], 1, 1, 1, device=y.device) >= self.drop_path
            y = y * keep / (1 - self.drop_path)
        return x + y


class EfficientNet(PooledClassifier):
    def __init__(self, width=1.0, depth=1.0, dropout=0.2, num_classes=1000, drop_connect=0.2, name="efficientnet"):
        super().__init__()
        self.model_name, self.num_classes = name, num_classes
        cin = round_filters(32, width)
        layers = [_conv_bn(3, cin, 3, 2)]
        total = sum(round_repeats(n, depth) for *_, n in B0_BLOCKS)
        index = 0
        for expand, kernel, stride, cout, n in B0_BLOCKS:
            cout = round_filters(cout, width)
            for j in range(round_repeats(n, depth)):
                layers.append(MBConv(cin, cout, kernel, stride if j == 0 else 1, expand,
                                     drop_path=drop_connect * index / total))
                cin, index = cout, index + 1
        head = round_filters(1280, width)
        layers.append(_conv_bn(cin, head))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head, num_classes))


def efficientnet(phi, num_classes=1000, dropout=0.2):
    """EfficientNet scaled exactly by compound coefficient ``phi`` (no hand rounding); input (3, r, r)."""
    width, depth, _ = compound_coefficients(phi)
    return EfficientNet(width, depth, dropout, num_classes, name=f"efficientnet(phi={phi})")


def _register(variant):
    width, depth, res, dropout = PUBLISHED[variant]

    @register_model(f"efficientnet_{variant}", input_size=(3, res, res),
                    description=f"EfficientNet-{variant.upper()} (width {width}, depth {depth}, {res}px)")
    def build(num_classes=1000, drop_connect=0.2):
        return EfficientNet(width, depth, dropout, num_classes, drop_connect, name=f"efficientnet_{variant}")

    return build


(efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3,
 efficientnet_b4, efficientnet_b5, efficientnet_b6, efficientnet_b7) = (_register(v) for v in PUBLISHED)
