import torch
import torch.nn.functional as F
from torch import nn

from _toy_graphs import assert_untouched, state_copy, toy_mlp, toy_net, one_thread  # noqa: F401 (autouse fixture)
from slimkit.compress.fold import FoldConfig, fold, fold_model
from slimkit.compress.base import CompressContext, get_pass


def _modules(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def test_fold_toynet_exact_counts_and_outputs():
    model, x = toy_net(), torch.randn(3, 3, 8, 8)
    before = state_copy(model)
    gm, stats = fold_model(model, x)
    # stem, block1 x2, block2 x2, dw: 6 BNs, each after a single-use conv
    assert stats.bn_folded == 6 and _modules(gm, nn.BatchNorm2d) == 0
    assert stats.dropout_removed == 1  # the nn.Dropout module; functional F.dropout is code (a no-op in eval)
    assert _modules(gm, nn.Dropout) == 0 and _modules(gm, nn.Identity) == 7  # 6 folded BNs + the dropout
    assert stats.identity_removed == 0 and stats.linear_merged == 0
    assert type(gm) is type(model)  # the user's class, forward code unchanged
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    assert_untouched(model, before)


def test_fold_mlp_bn1d_identity_and_no_merge_through_relu():
    model, x = toy_mlp(), torch.randn(5, 12)
    gm, stats = fold_model(model, x)
    assert (stats.bn_folded, stats.identity_removed, stats.linear_merged) == (1, 0, 0)
    assert _modules(gm, nn.Identity) == 2 and _modules(gm, nn.BatchNorm1d) == 0  # the folded BN + the original
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


class Chain(nn.Module):
    """linear -> linear (merge lowers MACs) and a bottleneck pair (merge would raise MACs: kept)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.c, self.d = nn.Linear(4, 2), nn.Linear(2, 32)

    def forward(self, x):
        return self.d(self.c(F.dropout(self.b(self.a(x)), 0.5, self.training)))


def test_fold_merges_linear_pairs_only_when_cheaper():
    torch.manual_seed(0)
    model, x = Chain().eval(), torch.randn(4, 8)
    gm, stats = fold_model(model, x)
    # a,b (16*8+4*16=192 > 8*4=32) merge; then (ab),c through the eval-mode (no-op) dropout:
    # 4*8+2*4=40 > 2*8=16 merge; (abc),d: 2*8+32*2=80 < 32*8=256 keeps the bottleneck
    assert stats.linear_merged == 2 and stats.dropout_removed == 0
    assert _modules(gm, nn.Linear) == 2 and gm.c.in_features == 8 and gm.d.in_features == 2
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_registered_and_context_stats():
    cls, fn = get_pass("fold")
    assert cls is FoldConfig and cls.lossless
    ctx = CompressContext(progress=False)
    model, x = toy_net(1), torch.randn(2, 3, 8, 8)
    out = fn(model, x, FoldConfig(bn=False), ctx)
    assert ctx.extras["fold"].bn_folded == 0 and _modules(out, nn.BatchNorm2d) == 6
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
