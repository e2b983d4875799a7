"""bnrecal changes only BatchNorm running statistics, and to the statistics of the (augmented) images."""
import torch
from torch import nn

from _tiny_resnet import tiny_data, tiny_model
from slimkit.compress.base import CompressContext
from slimkit.compress.bnrecal import BNRecalConfig, bnrecal, collecting_statistics, recalibrate
from slimkit.compress.views import flip_safe, mix, random_views


def test_only_running_statistics_change():
    model = tiny_model()
    data = tiny_data(n_batches=3)
    ctx = CompressContext(teacher=model, data=data, progress=False)
    out = bnrecal(model, data[0][0][:1], BNRecalConfig(passes=2), ctx)
    before, after = model.state_dict(), out.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), out.parameters()))
    assert not out.training and out.bn.momentum == model.bn.momentum


def test_statistics_are_those_of_the_data_without_augmentation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()
    x = torch.randn(32, 3, 6, 6) * 2 + 1
    recalibrate(model, x, passes=1, batch_size=32, augment=False)
    with torch.no_grad():
        y = model[0](x)
    torch.testing.assert_close(model[1].running_mean, y.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, y.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)


def test_collecting_statistics_averages_every_batch_and_restores_the_modes():
    """Inside, BatchNorm is in training mode with reset statistics and a cumulative average (two batches of equal
    size count the same, 1e-5); after, its mode and momentum are back and the model is in eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.3)).eval()
    a, b = torch.randn(8, 3, 6, 6), torch.randn(8, 3, 6, 6) * 3 + 1
    with collecting_statistics(model) as n:
        assert n == 1 and model[1].training and not model[0].training
        model(a), model(b)
    with torch.no_grad():
        ya, yb = model[0](a), model[0](b)
    torch.testing.assert_close(model[1].running_mean, 0.5 * (ya.mean((0, 2, 3)) + yb.mean((0, 2, 3))),
                               rtol=1e-5, atol=1e-5)
    assert not model.training and not model[1].training and model[1].momentum == 0.3


def test_views_keep_shapes_and_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    v = random_views(x, g, crop=True, flip=False)
    assert v.shape == x.shape
    # a crop is a shift: every view's non-zero values appear in its source image
    for i in range(8):
        vals = v[i][v[i] != 0]
        assert torch.isin(vals, x[i]).all()
    for mode in ("mixup", "cutmix"):
        assert mix(x, g, mode).shape == x.shape
    flat = torch.randn(5, 7)
    assert random_views(flat, g) is flat  # non-images pass through


def test_flip_safe_asks_the_teacher():
    class LeftRight(nn.Module):  # class = which half of the image is brighter: flipping swaps it
        def forward(self, x):
            d = x[..., :x.shape[-1] // 2].mean((1, 2, 3)) - x[..., x.shape[-1] // 2:].mean((1, 2, 3))
            return torch.stack([d, -d], 1)

    class Bright(nn.Module):  # class = overall brightness: flipping keeps it
        def forward(self, x):
            m = x.mean((1, 2, 3))
            return torch.stack([m, -m], 1)

    x = torch.randn(64, 1, 8, 8)
    assert not flip_safe(LeftRight(), x) and flip_safe(Bright(), x)
