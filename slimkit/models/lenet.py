"""LeNet-5 for 28x28 MNIST-style inputs.

Variant: the common modern LeNet-5 - conv5x5(6, pad 2) -> ReLU -> maxpool2 -> conv5x5(16) -> ReLU -> maxpool2
-> fc 400->120 -> ReLU -> fc 120->84 -> ReLU -> fc 84->classes. ReLU and max-pooling replace the original
tanh and trainable sub-sampling; padding 2 on the first conv keeps the original 32x32 geometry.
"""
import torch
from torch import nn

from slimkit.models._checks import check_image_input
from slimkit.models._registry import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward_features(self, x):
        check_image_input("lenet5", x, self.in_channels)
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return torch.flatten(x, 1)

    def forward_head(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 28, 28))
def lenet5(num_classes=10, in_channels=1):
    """LeNet-5 (ReLU, max-pool) for 1x28x28 MNIST."""
    return LeNet5(num_classes, in_channels)
