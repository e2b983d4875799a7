"""drop: residual blocks go, shapes stay, and the least harmful block is the one dropped."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.compress.base import CompressContext
from slimkit.compress.bnrecal import recalibrate
from slimkit.compress.drop import DropConfig, candidate_blocks, drop
from slimkit.profile.counting import count_macs


class Res(nn.Module):
    def __init__(self, c, scale):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        with torch.no_grad():
            self.bn2.weight.fill_(scale)  # residual branch strength

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Res(8, 1.0), Res(8, 0.01), Res(8, 1.0))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.down(self.blocks(self.stem(x))), 1).flatten(1))


def test_candidates_are_shape_preserving_blocks():
    m = Net().eval()
    assert candidate_blocks(m, torch.randn(2, 3, 8, 8)) == ["blocks.0", "blocks.1", "blocks.2"]


def test_drop_keeps_shapes_and_removes_the_weakest_block():
    m = Net().eval()
    x = torch.randn(32, 3, 8, 8)
    recalibrate(m, x, passes=1, augment=False)  # running statistics of this data, as a trained net has
    ctx = CompressContext(teacher=m, data=[(x, torch.zeros(32, dtype=torch.long))], progress=False)
    out = drop(m, x[:1], DropConfig(blocks=1), ctx)
    assert out.dropped_blocks == ["blocks.1"]  # its residual branch is scaled by 0.01
    assert isinstance(out.blocks[1], nn.Identity)
    with torch.no_grad():
        assert out(x).shape == m(x).shape
    block = 2 * 8 * 8 * 9 * 64  # two 3x3 convs 8->8 on 8x8
    assert count_macs(m, (x[:1],)) - count_macs(out, (x[:1],)) == block
    two = drop(m, x[:1], DropConfig(macs=0.7), ctx)
    assert len(two.dropped_blocks) == 2 and two.dropped_blocks[0] == "blocks.1"  # one block is not enough for 0.7x
    assert count_macs(two, (x[:1],)) <= 0.7 * count_macs(m, (x[:1],))


def test_config_errors():
    with pytest.raises(ValueError, match="exactly one"):
        DropConfig()
    with pytest.raises(ValueError, match="exactly one"):
        DropConfig(blocks=1, macs=0.5)
