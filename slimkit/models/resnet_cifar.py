"""CIFAR ResNets (He et al. 2016, section 4.2) with option-A shortcuts.

Module names match the widely used akamaster/pytorch_resnet_cifar10 release, so its checkpoints load:
conv1, bn1, layer1..3 of BasicBlocks (conv1, bn1, conv2, bn2, shortcut), linear.
"""
import torch.nn.functional as F
from torch import nn

from slimkit.models._checks import check_image_input
from slimkit.models._registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: take every second pixel and zero-pad the channels by ``pad`` on each side.

    Output channel ``left + c`` carries input channel ``c``; the other channels are zero. The amounts
    are attributes with a ``set_channel_pad`` hook, so structured pruning may remove padded channels
    too (with a padding in code, as in a lambda, those channels must stay).
    """

    def __init__(self, pad):
        super().__init__()
        self.left = self.right = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.left, self.right))

    def set_channel_pad(self, dim, left, right):
        if dim != 1:
            raise ValueError(f"PadShortcut pads channels (dim 1), not dim {dim}")
        self.left, self.right = left, right

    def extra_repr(self):
        return f"left={self.left}, right={self.right}"


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_pad = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(planes // 4) if needs_pad else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10, width=16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.name = f"resnet{depth}"
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = [width, 2 * width, 4 * width]
        in_planes = width
        layers = []
        for i, p in enumerate(planes):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, p, 2 if (i > 0 and j == 0) else 1))
                in_planes = p
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(planes[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x):
        check_image_input(self.name, x, 3)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward_head(self, x):
        return self.linear(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _register(depth):
    @register_model(f"resnet{depth}", input_size=(3, 32, 32),
                    description=f"CIFAR ResNet-{depth}, option-A shortcuts")
    def build(num_classes=10, width=16):
        return CifarResNet(depth, num_classes, width)

    return build


resnet20, resnet32, resnet44, resnet56, resnet110 = (_register(d) for d in (20, 32, 44, 56, 110))
