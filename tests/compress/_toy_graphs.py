"""Tiny deterministic user models for the graph, prune and surgery tests: residual adds, an option-A channel-padded
shortcut, concat, a depthwise conv, functional ops, dropout, flatten -> linear head, an MLP."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs on a shared 2-core box: 2 intra-op threads under load are ~100x slower than 1."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        # option-A shortcut: subsample, zero-pad the channel dim (functional, as in CIFAR ResNets)
        sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(y + sc)


class ToyNet(nn.Module):
    """stem -> residual block -> padded-shortcut block -> depthwise -> concat -> dropout -> flatten -> fc."""

    def __init__(self, width=4, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1)
        self.bn = nn.BatchNorm2d(width)
        self.block1 = Block(width, width, 1)
        self.block2 = Block(width, 2 * width, 2)
        self.dw = nn.Conv2d(2 * width, 2 * width, 3, 1, 1, groups=2 * width, bias=False)
        self.dwbn = nn.BatchNorm2d(2 * width)
        self.side = nn.Conv2d(2 * width, 6, 1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear((2 * width + 6) * 4 * 4, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        x = F.relu6(self.dwbn(self.dw(x)))
        x = torch.cat([x, torch.sigmoid(self.side(x))], 1)
        x = F.dropout(x, 0.1, self.training)
        return self.fc(self.drop(torch.flatten(x, 1)))


class MLP(nn.Module):
    def __init__(self, sizes=(12, 16, 10, 3)):
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.bn1 = nn.BatchNorm1d(sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.id = nn.Identity()
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x):
        return self.fc3(self.id(F.relu(self.fc2(F.relu(self.bn1(self.fc1(x)))))))


def randomize_bn(model, seed=0):
    """Non-trivial BN statistics and affine params so folding/pruning tests are meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


def toy_net(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(ToyNet(), seed).eval()


def toy_mlp(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(MLP(), seed).eval()


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before):
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"input model changed: {k}"
