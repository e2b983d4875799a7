import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _toy_graphs import ToyNet, assert_untouched, randomize_bn, state_copy, toy_mlp, toy_net, one_thread  # noqa: F401 (autouse fixture)
from slimkit.compress.base import CompressContext, get_pass
from slimkit.compress.prune import PruneConfig, prune
from slimkit.profile.counting import count_macs

CTX = dict(progress=False)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "vote", "redundancy"])
def test_layer_ratio_exact_channel_counts(criterion):
    model, x = toy_net(), torch.randn(8, 3, 8, 8)
    before = state_copy(model)
    out = prune(model, x, PruneConfig(ratio=0.5, scope="layer", criterion=criterion), CompressContext(**CTX))
    # clusters: block1.conv1 (4) -> 2, side (6) -> 3, block2.conv1 (8) -> 4, stage-1 stream (4) -> 2; the
    # 4 stage-2 channels that meet only the functional zero pad stay (its amounts live in code)
    assert type(out) is ToyNet
    assert out.block1.conv1.out_channels == 2 and out.block1.conv2.in_channels == 2
    assert out.side.out_channels == 3
    assert out.block2.conv1.out_channels == 4 and out.block2.bn1.num_features == 4
    stream = out.stem.out_channels
    assert stream == 2 == out.block1.conv2.out_channels == out.block2.conv1.in_channels
    assert out.block2.conv2.out_channels == 6 and out.dw.groups == 6 and out.dwbn.num_features == 6
    assert out.block2.pad == 2  # the padded shortcut still matches the pruned add input: 2 + 2 + 2
    assert out.fc.in_features == (6 + 3) * 16 and out.fc.out_features == 5
    assert out(x).shape == (8, 5)
    assert_untouched(model, before)


def test_macs_target_global_and_layer_scope():
    torch.manual_seed(0)
    model, x = randomize_bn(ToyNet(width=16)).eval(), torch.randn(2, 3, 8, 8)
    macs0 = count_macs(model, x)
    for scope in ("global", "layer"):
        out = prune(model, x, PruneConfig(macs=0.5, scope=scope), CompressContext(**CTX))
        ratio = count_macs(out, x) / macs0
        assert 0.4 <= ratio <= 0.5, (scope, ratio)
        assert out(x).shape == (2, 5)


def test_keep_everything_is_lossless_and_round_to():
    model, x = toy_net(2), torch.randn(4, 3, 8, 8)
    out = prune(model, x, PruneConfig(ratio=0.0), CompressContext(**CTX))
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-6)
    out = prune(model, x, PruneConfig(ratio=0.5, scope="layer", round_to=3), CompressContext(**CTX))
    assert out.side.out_channels == 3 and out.block2.conv1.out_channels == 6  # 4 kept -> rounded up to 6
    assert out.block1.conv1.out_channels == 3  # 2 kept -> 3


class RedundantMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class RedundantCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(F.relu(self.c1(x))).mean((2, 3))


@pytest.mark.parametrize("cls,shape", [(RedundantMLP, (64, 8)), (RedundantCNN, (8, 3, 6, 6))])
def test_linear_redundancy_removes_dependent_unit_losslessly(cls, shape):
    torch.manual_seed(0)
    model = cls().eval()
    first = model.fc1 if cls is RedundantMLP else model.c1
    with torch.no_grad():  # unit 5 = 2 x unit 0 before ReLU, so exactly after it too
        first.weight[5] = 2 * first.weight[0]
        first.bias[5] = 2 * first.bias[0]
    x = torch.randn(shape)
    before = state_copy(model)
    out = prune(model, x, PruneConfig(criterion="redundancy", tau=1e-3), CompressContext(**CTX))
    pruned = out.fc1 if cls is RedundantMLP else out.c1
    assert pruned.weight.shape[0] == 5
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
    assert_untouched(model, before)


def test_mlp_prune_and_config_errors():
    model, x = toy_mlp(), torch.randn(6, 12)
    out = prune(model, x, PruneConfig(ratio=0.25, scope="layer"), CompressContext(**CTX))
    assert (out.fc1.out_features, out.bn1.num_features, out.fc2.out_features) == (12, 12, 8)
    with pytest.raises(ValueError, match="macs= .* ratio= .* ratios="):
        PruneConfig()
    with pytest.raises(ValueError, match="expected one of"):
        PruneConfig(ratio=0.5, criterion="magic")
    with pytest.raises(ValueError, match="scope"):
        PruneConfig(ratio=0.5, scope="everywhere")
    assert get_pass("prune")[0] is PruneConfig


def _zoo(name):
    from slimkit.models import create_model

    return create_model(name).eval()  # an unregistered name fails, listing the known models


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_prune_zoo_models(name):
    model = _zoo(name)
    from slimkit.models._registry import get_model_info
    x = torch.randn(2, *get_model_info(name).input_size)
    out = prune(model, x, PruneConfig(macs=0.5), CompressContext(**CTX))
    ratio = count_macs(out, x) / count_macs(model, x)
    assert 0.35 <= ratio <= 0.5 and out(x).shape == model(x).shape


def test_unreachable_macs_target_warns_and_names_the_grouped_conv():
    """A grouped conv keeps its channels (in and out); when that makes macs=0.7 unreachable, prune says so with
    the MAC fraction it reached and the module, instead of returning a model that looks like a met budget."""
    class Grouped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.g = torch.nn.Conv2d(16, 16, 3, padding=1, groups=4)
            self.b = torch.nn.Conv2d(16, 8, 1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.b(torch.relu(self.g(torch.relu(self.a(x))))).mean((2, 3)))

    torch.manual_seed(0)
    model = Grouped().eval()
    with pytest.warns(UserWarning, match=r"macs=0.7 cannot be reached; .* keeps 0\.\d\d .*grouped conv \(groups=4\) at g"):
        out = prune(model, torch.randn(2, 3, 8, 8), PruneConfig(macs=0.7), CompressContext(progress=False))
    assert out.g.weight.shape == (16, 4, 3, 3) and out.a.weight.shape[0] == 16


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_macs_search_with_round_to_gives_back_what_fits(scope):
    # the bisection moves every cluster by a whole rounding unit at once; the give-back must leave a model at or
    # under the target from which no further unit of any cluster can be returned
    from slimkit.compress.prune import Pruner

    torch.manual_seed(0)
    model, x = randomize_bn(ToyNet(width=32)).eval(), torch.randn(2, 3, 8, 8)
    pruner = Pruner(model, x, coupled=False)
    target, r = 0.6, 4
    removed = pruner.search_macs(target, scope, r)
    assert pruner.macs_ratio(removed) <= target + 1e-9
    for ci, cluster in enumerate(pruner.clusters):
        gone = [g for g in cluster if g in removed]
        kept = len(cluster) - len(gone)
        assert kept == len(cluster) or kept % r == 0, (ci, kept)
        if gone:
            assert pruner.estimated_macs(set(removed) - set(gone[-r:])) / pruner.macs0 > target, ci
