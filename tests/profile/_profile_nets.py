"""Tiny deterministic models with hand-computed counts for the profiler tests."""
import torch
import torch.nn as nn


def conv_net():
    # Conv2d(3->4, k3) on 8x8: out 4x6x6, MACs 4*6*6*3*3*3 = 3,888; Linear(144->5): 720 MACs.
    # params: conv 4*3*3*3 + 4 = 112, linear 144*5 + 5 = 725 -> 837; fp32 -> 3,348 bytes.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


class Nested(nn.Module):
    """block (conv + BN + ReLU) -> head; BN adds 8 params and 2x4 fp32 + 1 int64 buffers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.head(self.block(x).flatten(1))


class WithCdist(nn.Module):
    """Linear(3->2) then torch.cdist, an op FlopCounterMode cannot count."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2)

    def forward(self, x):
        y = self.proj(x)
        return torch.cdist(y, y).relu() + 1


class LstmHead(nn.Module):
    """LSTM(8->16) over T steps, then Linear(16->3): T*4*16*(8+16) + 48 MACs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])
