"""synth: images fitted to a teacher's BatchNorm statistics match them within a stated tolerance."""
import pytest
import torch
from torch import nn

from slimkit.compress.base import CompressContext
from slimkit.compress.bnrecal import recalibrate
from slimkit.compress.synth import SynthConfig, bn_statistics_gap, synth
from slimkit.errors import SlimkitError


def _teacher():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                      nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    # running statistics of a "training set" unlike the noise synthesis starts from (so they are reachable)
    x_train = torch.randn(256, 3, 8, 8) * torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1) + torch.tensor([0.5, -0.5, 0.0]).view(1, 3, 1, 1)
    recalibrate(m, x_train, passes=1, batch_size=256, augment=False)
    return m.eval()


def test_synthetic_images_match_the_bn_statistics():
    teacher = _teacher()
    x0 = torch.randn(32, 3, 8, 8)
    gap0 = bn_statistics_gap(teacher, x0)
    ctx = CompressContext(teacher=teacher, progress=False)
    cfg = SynthConfig(n=32, iters=300, batch_size=32, lr=0.05, ce=0.0, jitter=0, flip=False)
    out = synth(teacher, x0[:1], cfg, ctx)
    X, Y = ctx.extras["synthetic"]
    assert X.shape == (32, 3, 8, 8) and Y.shape == (32,)
    gaps = bn_statistics_gap(teacher, X)
    # tolerance: batch means within 0.05 of the running means, variances within 10 % of the running variances
    assert all(m < 0.05 and v < 0.10 for m, v in gaps), gaps
    assert all(m1 < m0 for (m1, _), (m0, _) in zip(gaps, gap0))  # far closer than the noise it started from
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), teacher.state_dict().values()))


def test_needs_batchnorm():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(SlimkitError, match="BatchNorm"):
        synth(model, torch.randn(1, 3, 2, 2), SynthConfig(n=4, iters=1), CompressContext(teacher=model, progress=False))
