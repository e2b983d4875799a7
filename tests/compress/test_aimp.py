import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _toy_graphs import assert_untouched, state_copy, toy_net, one_thread  # noqa: F401 (autouse fixture)
from slimkit.compress.base import CompressContext, get_pass
from slimkit.compress.prune_unstructured import (SparsifyConfig, magnitude_masks, prunable_weights,
                                                 schedule_epochs, sparsify)


def _zeros(model):
    ws = prunable_weights(model)
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)


def test_schedules():
    assert schedule_epochs(SparsifyConfig(iterations=4, epochs=10)) == [5, 5, 5, 10]  # AIMP: 50% shorter
    assert schedule_epochs(SparsifyConfig(schedule="imp", iterations=3, epochs=10)) == [10, 10, 10]
    assert schedule_epochs(SparsifyConfig(schedule="oneshot")) == [0]
    with pytest.raises(ValueError, match="schedule"):
        SparsifyConfig(schedule="fast")


def test_magnitude_masks_exact_count_and_monotone():
    torch.manual_seed(0)
    ws = [torch.randn(10, 10), torch.randn(5, 4)]
    masks = magnitude_masks(ws, [torch.ones_like(w) for w in ws], 0.5)
    assert sum(int(m.sum()) for m in masks) == 60  # 120 weights, exactly half kept
    kept = torch.cat([w.abs()[m.bool()] for w, m in zip(ws, masks)])
    gone = torch.cat([w.abs()[~m.bool()] for w, m in zip(ws, masks)])
    assert kept.min() >= gone.max()
    masks2 = magnitude_masks(ws, masks, 0.75)
    assert sum(int(m.sum()) for m in masks2) == 30
    assert all(bool((m2 <= m).all()) for m, m2 in zip(masks, masks2))  # never revives


def test_oneshot_without_data_hits_exact_sparsity():
    model, x = toy_net(), torch.randn(2, 3, 8, 8)
    before = state_copy(model)
    ctx = CompressContext(progress=False)
    out = sparsify(model, x, SparsifyConfig(sparsity=0.6), ctx)
    zeros, total = _zeros(out)
    assert zeros == round(0.6 * total) and not ctx.extras["sparsify"]["retrained"]
    assert_untouched(model, before)
    assert get_pass("sparsify")[0] is SparsifyConfig


def test_aimp_retrains_with_callback_keeps_masks_and_learns():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    calls = []

    def train_fn(m, epochs):
        calls.append(epochs)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for _ in range(epochs * 20):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()

    ctx = CompressContext(progress=False, extras={"train_fn": train_fn})
    out = sparsify(model, x, SparsifyConfig(sparsity=0.8, iterations=3, epochs=4), ctx)
    assert calls == [2, 2, 4] and ctx.extras["sparsify"]["epochs_total"] == 8
    zeros, total = _zeros(out)
    assert zeros >= round(0.8 * total)  # masked weights stay zero through momentum SGD
    assert (out(x).argmax(1) == y).float().mean() >= 0.9


def test_default_trainer_uses_context_data():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = [(torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))) for _ in range(2)]
    ctx = CompressContext(progress=False, data=data)
    out = sparsify(model, data[0][0], SparsifyConfig(sparsity=0.5, iterations=2, epochs=2), ctx)
    assert ctx.extras["sparsify"]["retrained"] and ctx.extras["sparsify"]["epochs_per_round"] == [1, 2]
    assert _zeros(out)[0] >= 18
