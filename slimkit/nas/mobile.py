"""A MobileNetV2 / Seesaw-Net block space: per stage a depth, an expansion, a depthwise kernel (3/5)
and a point-wise group pattern; one width multiplier for the whole net.

Group patterns (see slimkit.models.seesaw and ../shared/research/methods.md, section 4):

* ``dense``   - MobileNetV2's inverted residual (ReLU6 after the expansion 1x1);
* ``uneven``  - Seesaw-Net with shuffle: uneven 1/4 : 3/4 1x1s, channel shuffle after the first;
* ``seesaw``  - Seesaw-Net without permutation: the second 1x1 splits 3/4 : 1/4 (mirrored);
* ``even``    - even g=2 1x1s with a channel shuffle (IGCV3-like).

Grouped blocks follow the zoo's Seesaw blocks (no activation after the first 1x1). The stage layout
is data (``MobileStage``); the default follows MobileNetV2 with the zoo's CIFAR strides, so the zoo's
``mobilenet_v2`` (width 1.0) is one architecture of the space. Spec body: ``w0.75/1x1k3dense/2x6k5uneven/...``.
"""
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.models.mobilenet_v2 import make_divisible
from slimkit.models.seesaw import ChannelShuffle, UnevenGroupConv1x1
from slimkit.models._checks import check_image_input
from slimkit.nas.layers import SharedBN, SharedConv, dense_groups
from slimkit.nas.space import Choice, SearchSpace, register_space

PATTERNS = ("dense", "uneven", "seesaw", "even")
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class MobileStage:
    channels: int
    stride: int
    depths: tuple
    expands: tuple
    kernels: tuple = (3, 5)
    patterns: tuple = PATTERNS


# MobileNetV2's stages with the zoo's CIFAR strides (stride 1 in the stem and in the 24-channel stage).
MOBILE_STAGES = (
    MobileStage(16, 1, (1,), (1,), patterns=("dense",)),
    MobileStage(24, 1, (1, 2, 3), (3, 6)),
    MobileStage(32, 2, (1, 2, 3), (3, 6)),
    MobileStage(64, 2, (1, 2, 3, 4), (3, 6)),
    MobileStage(96, 1, (1, 2, 3), (3, 6)),
    MobileStage(160, 2, (1, 2, 3), (3, 6)),
    MobileStage(320, 1, (1,), (3, 6)),
)
TINY_STAGES = (
    MobileStage(8, 1, (1,), (1,), kernels=(3,), patterns=("dense",)),
    MobileStage(16, 2, (1, 2), (2, 4)),
    MobileStage(24, 2, (1, 2), (2, 4)),
)


def _pattern_groups(pattern):
    """Group layouts of (expansion 1x1, projection 1x1) and whether a shuffle follows the first."""
    return {"dense": ("dense", "dense", False), "uneven": ("uneven", "uneven", True),
            "seesaw": ("uneven", "mirror", False), "even": ("even", "even", True)}[pattern]


def _pointwise(cin, cout, layout):
    if layout == "dense":
        return nn.Conv2d(cin, cout, 1, bias=False)
    if layout == "even":
        return nn.Conv2d(cin, cout, 1, groups=2, bias=False)
    return UnevenGroupConv1x1(cin, cout, mirror=layout == "mirror")


class MobileBlock(nn.Module):
    """Standalone block: [1x1 -> BN (-> ReLU6 if dense) (-> shuffle)] -> DW k -> BN -> ReLU6 -> 1x1 -> BN (+ x)."""

    def __init__(self, cin, cout, stride, expand, kernel, pattern):
        super().__init__()
        first, second, shuffle = _pattern_groups(pattern)
        hidden = cin * expand
        self.expand = None
        if expand != 1:
            self.expand = _pointwise(cin, hidden, first)
            self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = nn.ReLU6() if pattern == "dense" and expand != 1 else nn.Identity()
        self.shuffle = ChannelShuffle(2) if shuffle and expand != 1 else nn.Identity()
        self.dw = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.bn_dw = nn.BatchNorm2d(hidden)
        self.project = _pointwise(hidden, cout, second if expand != 1 else "dense")
        self.bn2 = nn.BatchNorm2d(cout)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        y = x if self.expand is None else self.shuffle(self.act1(self.bn1(self.expand(x))))
        y = self.bn2(self.project(F.relu6(self.bn_dw(self.dw(y)))))
        return x + y if self.use_res else y


def _stem_head(stem_out, c_last, num_classes, dropout):
    stem = nn.Sequential(nn.Conv2d(3, stem_out, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_out), nn.ReLU6())
    head = nn.Sequential(nn.Conv2d(c_last, HEAD_CHANNELS, 1, bias=False), nn.BatchNorm2d(HEAD_CHANNELS), nn.ReLU6())
    return stem, head, nn.Sequential(nn.Dropout(dropout), nn.Linear(HEAD_CHANNELS, num_classes))


def _decode(space, arch):
    """(width, [(depth, expand, kernel, pattern) per stage]) of an Arch."""
    v = arch.values
    return v[0], [tuple(v[1 + 4 * s: 5 + 4 * s]) for s in range(len(space.options["stages"]))]


def _block_plan(space, arch):
    """[(stage, j, cin, cout, stride, expand, kernel, pattern)] for every block of ``arch``."""
    width, stages = _decode(space, arch)
    cin = make_divisible(32 * width)
    plan = []
    for s, (st, (depth, expand, kernel, pattern)) in enumerate(zip(space.options["stages"], stages)):
        cout = make_divisible(st.channels * width)
        for j in range(depth):
            plan.append((s, j, cin, cout, st.stride if j == 0 else 1, expand, kernel, pattern))
            cin = cout
    return make_divisible(32 * width), plan, cin


class MobileNet(nn.Module):
    """The standalone network of one architecture of a mobile space."""
    model_name = "nas"

    def __init__(self, space, arch, num_classes=10, dropout=0.2):
        super().__init__()
        self.num_classes = num_classes
        stem_out, plan, c_last = _block_plan(space, arch)
        stem, head, classifier = _stem_head(stem_out, c_last, num_classes, dropout)
        self.stem = stem  # registered in forward order, like the zoo's models
        self.blocks = nn.Sequential(*[MobileBlock(cin, cout, stride, t, k, p)
                                      for _s, _j, cin, cout, stride, t, k, p in plan])
        self.head, self.pool, self.classifier = head, nn.AdaptiveAvgPool2d(1), classifier

    def forward_features(self, x):
        check_image_input(self.model_name, x, 3)
        return self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)

    def forward_head(self, x):
        return self.classifier(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class SuperBlock(nn.Module):
    """Every block choice of one block position, weights at the largest size."""

    def __init__(self, cin_max, cout_max, expand_max, k_max):
        super().__init__()
        h = cin_max * expand_max
        self.expand = SharedConv(h, cin_max)
        self.bn1 = SharedBN(h)
        self.dw = SharedConv(h, h, k_max, depthwise=True)
        self.bn_dw = SharedBN(h)
        self.project = SharedConv(cout_max, h)
        self.bn2 = SharedBN(cout_max)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x, cout, stride, expand, kernel, pattern):
        cin = x.shape[1]
        first, second, shuffle = _pattern_groups(pattern)
        h = cin * expand
        y = x
        if expand != 1:
            y = self.bn1(self.expand(x, h, 1, 1, dense_groups(cin, h, first)))
            if pattern == "dense":
                y = F.relu6(y)
            if shuffle:
                y = self.shuffle(y)
        y = F.relu6(self.bn_dw(self.dw(y, h, kernel, stride)))
        y = self.bn2(self.project(y, cout, 1, 1, dense_groups(h, cout, second if expand != 1 else "dense")))
        return x + y if stride == 1 and cin == cout else y

    def export_into(self, block, cin, cout, expand, kernel, pattern):
        first, second, _ = _pattern_groups(pattern)
        h = cin * expand
        if expand != 1:
            _copy_pointwise(block.expand, self.expand, cin, h, first)
            _copy_bn(block.bn1, self.bn1)
        block.dw.weight.data.copy_(self.dw.sliced_weight(h, 1, kernel))
        _copy_bn(block.bn_dw, self.bn_dw)
        _copy_pointwise(block.project, self.project, h, cout, second if expand != 1 else "dense")
        _copy_bn(block.bn2, self.bn2)


def _copy_bn(bn, shared):
    c = bn.num_features
    bn.running_mean.copy_(shared.running_mean[:c])
    bn.running_var.copy_(shared.running_var[:c])
    if bn.affine:
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)


def _copy_pointwise(conv, shared, cin, cout, layout):
    groups = dense_groups(cin, cout, layout)
    if isinstance(conv, UnevenGroupConv1x1):
        for sub, g in zip((conv.group_a, conv.group_b), groups):
            sub.weight.data.copy_(shared.sliced_weight(None, None, 1, [g]))
    else:
        conv.weight.data.copy_(shared.sliced_weight(cout, cin, 1, groups if layout != "dense" else None))


class MobileSupernet(nn.Module):
    """Weight-sharing supernet of a mobile space (single path, sliced weights, sliced BN statistics)."""
    model_name = "nas"
    skeleton = ("stem", "head", "classifier")  # sliced by the width only: shared by every architecture

    def __init__(self, space, num_classes=10):
        super().__init__()
        self.space, self.num_classes, self.arch = space, num_classes, None
        o = space.options
        w_max = max(o["widths"])
        stem_max = make_divisible(32 * w_max)
        self.stem = SharedConv(stem_max, 3, 3)
        self.stem_bn = SharedBN(stem_max)
        self.blocks = nn.ModuleList()
        cin = stem_max
        for st in o["stages"]:
            cout = make_divisible(st.channels * w_max)
            stage = nn.ModuleList()
            for j in range(max(st.depths)):
                stage.append(SuperBlock(cin if j == 0 else cout, cout, max(st.expands), max(st.kernels)))
            self.blocks.append(stage)
            cin = cout
        self.head = SharedConv(HEAD_CHANNELS, cin)
        self.head_bn = SharedBN(HEAD_CHANNELS)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def set_arch(self, arch):
        self.arch = self.space.parse(arch)
        self._plan = _block_plan(self.space, self.arch)
        return self

    def forward(self, x):
        if self.arch is None:
            raise ValueError("MobileSupernet: call set_arch(arch) before forward")
        check_image_input(self.model_name, x, 3)
        stem_out, plan, _ = self._plan
        x = F.relu6(self.stem_bn(self.stem(x, stem_out, 3, 1)))
        for s, j, _cin, cout, stride, t, k, p in plan:
            x = self.blocks[s][j](x, cout, stride, t, k, p)
        x = F.relu6(self.head_bn(self.head(x, HEAD_CHANNELS)))
        return self.classifier(x.mean((2, 3)))

    def export(self, arch=None, num_classes=None):
        """Standalone ``MobileNet`` of ``arch`` holding the supernet's weight slices and BN statistics."""
        arch = self.space.parse(arch or self.arch)
        net = self.space.build(arch, num_classes or self.num_classes)
        stem_out, plan, c_last = _block_plan(self.space, arch)
        with torch.no_grad():
            net.stem[0].weight.copy_(self.stem.sliced_weight(stem_out, 3, 3))
            _copy_bn(net.stem[1], self.stem_bn)
            for block, (s, j, cin, cout, _stride, t, k, p) in zip(net.blocks, plan):
                self.blocks[s][j].export_into(block, cin, cout, t, k, p)
            net.head[0].weight.copy_(self.head.sliced_weight(HEAD_CHANNELS, c_last, 1))
            _copy_bn(net.head[1], self.head_bn)
            net.classifier[1].load_state_dict(self.classifier.state_dict())
        return net


_TOKEN = re.compile(r"(\d+)x(\d+)k(\d+)([a-z]+)$")


def _encode(values, n_stages):
    parts = [f"w{values[0]:g}"]
    for s in range(n_stages):
        d, t, k, p = values[1 + 4 * s: 5 + 4 * s]
        parts.append(f"{d}x{t}k{k}{p}")
    return "/".join(parts)


def _decode_body(body, n_stages):
    parts = body.split("/")
    if len(parts) != n_stages + 1 or not parts[0].startswith("w"):
        raise ValueError(f"mobile spec body {body!r} must be 'wWIDTH' then {n_stages} stage tokens "
                         f"DEPTHxEXPANDkKERNELPATTERN separated by '/', e.g. w1/1x1k3dense/2x6k3uneven/...")
    values = [float(parts[0][1:])]
    for tok in parts[1:]:
        m = _TOKEN.match(tok)
        if not m:
            raise ValueError(f"bad stage token {tok!r}; expected e.g. 2x6k3uneven (depth x expand k kernel pattern)")
        values += [int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)]
    return values


def _mobile_blocks(space, arch):
    """Latency look-up blocks: the stem, every block (keyed by its shape and choices) and the head."""
    width, _ = _decode(space, arch)
    stem_out, plan, c_last = _block_plan(space, arch)
    res = 32
    stem, head, classifier = _stem_head(stem_out, c_last, 10, 0.0)
    out = [(("stem", stem_out), stem, (3, res, res))]
    for _s, _j, cin, cout, stride, t, k, p in plan:
        out.append((("block", cin, cout, stride, t, k, p, res), MobileBlock(cin, cout, stride, t, k, p), (cin, res, res)))
        res = (res + stride - 1) // stride
    out.append((("head", c_last, res), nn.Sequential(head, nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier),
                (c_last, res, res)))
    return out


def _covering(space):
    """Archs that together hold every block of the space: per width and (expand, kernel, pattern),
    every stage at its largest depth with that choice where the stage offers it."""
    stages = space.options["stages"]
    opts = lambda attr: sorted({v for st in stages for v in getattr(st, attr)}, key=str)  # noqa: E731
    out = []
    for w in space.choices[0].options:
        for t in opts("expands"):
            for k in opts("kernels"):
                for p in opts("patterns"):
                    values = [w]
                    for st in stages:
                        values += [max(st.depths), t if t in st.expands else st.expands[0],
                                   k if k in st.kernels else st.kernels[0], p if p in st.patterns else st.patterns[0]]
                    out.append(space.arch(values))
    return out


def mobile_space(name, stages=MOBILE_STAGES, widths=(0.5, 0.75, 1.0)):
    stages = tuple(stages)
    choices = [Choice("width", tuple(float(w) for w in widths))]
    for s, st in enumerate(stages):
        choices += [Choice(f"s{s}.depth", tuple(st.depths)), Choice(f"s{s}.expand", tuple(st.expands)),
                    Choice(f"s{s}.kernel", tuple(st.kernels)), Choice(f"s{s}.pattern", tuple(st.patterns))]
    for p in (p for st in stages for p in st.patterns):
        if p not in PATTERNS:
            raise ValueError(f"unknown group pattern {p!r}; expected one of {', '.join(PATTERNS)}")
    n = len(stages)
    return SearchSpace(name=name, choices=choices, encode_body=lambda v: _encode(v, n),
                       decode_body=lambda b: _decode_body(b, n), builder=lambda sp, a, k: MobileNet(sp, a, k),
                       supernet_builder=lambda sp, k: MobileSupernet(sp, k),
                       options={"stages": stages, "widths": tuple(widths)},
                       defaults={"stages": stages, "widths": tuple(widths)}, blocks=_mobile_blocks,
                       covering=_covering)


@register_space("seesaw")
def seesaw():
    """MobileNetV2/Seesaw-Net blocks: per stage depth, expansion 3/6, kernel 3/5, pattern dense/uneven/
    seesaw/even; width 0.5/0.75/1.0; CIFAR strides (32x32 inputs)."""
    return mobile_space("seesaw")


@register_space("seesaw_tiny")
def seesaw_tiny():
    """A tiny mobile space for tests and quick runs: 3 stages, 8-24 channels, width 0.5/1.0."""
    return mobile_space("seesaw_tiny", TINY_STAGES, widths=(0.5, 1.0))
