"""A tiny ResNet (stem, one residual block with a functional add, a concat, linear head), its few-shot data and
an SNR helper, for the compression pass tests (no files, no downloads)."""
import torch
from torch import nn
import torch.nn.functional as F


class TinyResNet(nn.Module):
    """conv-bn-relu stem, one residual block with a functional add, a concat, avg-pool, linear head."""

    def __init__(self, width=8, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.side = nn.Conv2d(width, width, 1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = F.relu(self.conv2(F.relu(self.conv1(x))) + x)
        z = torch.cat([y, self.side(y)], 1)
        return self.fc(F.adaptive_avg_pool2d(z, 1).flatten(1))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    m = TinyResNet()
    with torch.no_grad():  # non-trivial BN statistics
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def tiny_data(n_batches=2, batch=16, classes=4, seed=1, size=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n_batches)]


def snr_db(ref, out):
    ref, out = ref.detach(), out.detach()
    return float(10 * torch.log10((ref ** 2).mean() / ((ref - out) ** 2).mean().clamp(min=1e-20)))
