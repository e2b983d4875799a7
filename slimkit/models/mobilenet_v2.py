"""MobileNetV2 (Sandler et al. 2018) with a CIFAR stem (32x32) or the ImageNet stem (224x224)."""
from torch import nn

from slimkit.models._checks import check_image_input
from slimkit.models._registry import register_model

# t (expansion), c (channels), n (repeats), s (first stride): the paper's Table 2.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(v, divisor=8):
    """Round a channel count to a multiple of ``divisor``, never below 90% of ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_act(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU6):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_act(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden), conv_bn_act(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class PooledClassifier(nn.Module):
    """Shared interface of the pooled image classifiers: ``features`` -> global pool -> ``classifier``."""

    model_name = "model"

    def forward_features(self, x):
        check_image_input(self.model_name, x, 3)
        return self.pool(self.features(x)).flatten(1)

    def forward_head(self, x):
        return self.classifier(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class MobileNetV2(PooledClassifier):
    model_name = "mobilenet_v2"

    def __init__(self, num_classes=10, stem="cifar", width_mult=1.0, dropout=0.2):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.num_classes = num_classes
        cifar = stem == "cifar"
        cin = make_divisible(32 * width_mult)
        self.last_channels = make_divisible(1280 * max(1.0, width_mult))
        layers = [conv_bn_act(3, cin, 3, 1 if cifar else 2)]
        for i, (t, c, n, s) in enumerate(SETTINGS):
            cout = make_divisible(c * width_mult)
            if cifar and i == 1:
                s = 1  # 32x32 inputs: keep resolution in the second stage as well as the stem
            for j in range(n):
                layers.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_act(cin, self.last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channels, num_classes))


@register_model(input_size=(3, 32, 32))
def mobilenet_v2(num_classes=10, stem="cifar", width_mult=1.0):
    """MobileNetV2; stem='cifar' (32x32, default) or 'imagenet' (224x224, see mobilenet_v2_imagenet)."""
    return MobileNetV2(num_classes, stem, width_mult)


@register_model(input_size=(3, 224, 224))
def mobilenet_v2_imagenet(num_classes=1000, width_mult=1.0):
    """MobileNetV2 with the ImageNet stem (224x224, 1000 classes)."""
    return MobileNetV2(num_classes, "imagenet", width_mult)
