"""The few-shot pipeline on a third-party-style CIFAR ResNet-56 (akamaster layout, option-A shortcut written as a
LambdaLayer around a Python lambda, random weights): every pass runs, shapes hold, the prune record is used."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from slimkit.compress import compress


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, n=9, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        cin, layers = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, planes, stride if i == 0 else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def test_resnet56_lambda_shortcut_pipeline():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ResNet().eval()
    x = torch.randn(20, 3, 16, 16)
    y = torch.arange(20) % 10
    with torch.no_grad():  # trained-like BN statistics
        model.train()
        model(x)
        model.eval()
    recipe = "drop(blocks=2),prune(macs=0.6,coupled=false),distill(method=layerwise,views=1,steps=3,k=2)"
    res = compress(model, x[:1], recipe, data=TensorDataset(x, y), eval_data=(x, y), progress=False,
                   latency_batches=())
    out = res.model
    assert [r.name for r in res.report.passes] == ["drop", "prune", "distill"]
    assert len(out.dropped_blocks) == 2
    assert res.report.after.macs <= 0.6 * res.report.passes[0].stats.macs + 1
    report = out.distill_report
    assert sum("re-selected" in v for v in report.values()) >= 20  # block-internal chains re-chosen by reconstruction
    assert not any(v.startswith("skipped") for v in report.values())
    with torch.no_grad():
        assert out(x).shape == (20, 10) and torch.isfinite(out(x)).all()
