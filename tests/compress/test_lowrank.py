import pytest
import torch
from torch import nn

from _toy_graphs import assert_untouched, state_copy, toy_mlp, toy_net, one_thread  # noqa: F401 (autouse fixture)
from slimkit.compress.base import CompressContext, get_pass
from slimkit.compress.lowrank import LowRankConfig, analyze, build, layer_macs, lowrank
from slimkit.profile.counting import count_macs


@torch.no_grad()
def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_full_rank_reconstruction_is_exact_for_every_method():
    model, x = toy_net(), torch.randn(2, 3, 8, 8)
    infos = analyze(model, x)
    assert set(infos) == {"stem", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2", "side", "fc"}
    seen = set()
    for name, info in infos.items():
        for method, svd in info.singular.items():
            seen.add(method)
            xi = torch.randn(info.in_shape)
            new = build(info.module, method, len(svd[1]), svd)
            torch.testing.assert_close(new(xi), info.module(xi), rtol=1e-5, atol=1e-5)
    assert seen == {"channel", "spatial", "svd"}


def _decaying(model, seed=0):
    """Trained-like weights: geometric singular-value decay, so the knob has room to work."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "groups", 1) == 1:
                w = m.weight.flatten(1)
                u, s, vh = torch.linalg.svd(torch.randn(w.shape, generator=g), full_matrices=False)
                s = 0.6 ** torch.arange(len(s), dtype=w.dtype)
                m.weight.copy_(((u * s) @ vh).view_as(m.weight))
    return model


def test_knob_macs_drop_exactly_as_predicted_and_error_grows():
    model, x = _decaying(toy_net()), torch.randn(4, 3, 8, 8)
    before = state_copy(model)
    macs0 = count_macs(model, x)
    errs, macs = [], []
    for t in (0.0, 0.3, 1.0, 3.0):
        ctx = CompressContext(progress=False)
        out = lowrank(model, x, LowRankConfig(tradeoff=t), ctx)
        predicted = sum(c.macs_before - c.macs_after for c in ctx.extras["lowrank"].values())
        assert macs0 - count_macs(out, x) == predicted  # exact MAC accounting
        with torch.no_grad():
            errs.append(_rel(out(x), model(x)))
        macs.append(count_macs(out, x))
    assert errs[0] == 0.0 and macs[0] == macs0  # tradeoff 0: nothing changes
    assert all(m2 < m1 for m1, m2 in zip(macs, macs[1:]))
    assert all(e2 > e1 for e1, e2 in zip(errs, errs[1:]))
    assert_untouched(model, before)


def test_energy_and_fixed_ranks():
    model, x = toy_mlp(), torch.randn(6, 12)
    ctx = CompressContext(progress=False)
    out = lowrank(model, x, LowRankConfig(ranks={"fc1": 4}), ctx)
    assert isinstance(out.fc1, nn.Sequential) and out.fc1[0].out_features == 4
    assert count_macs(model, x) - count_macs(out, x) == 6 * (12 * 16 - 4 * (12 + 16))
    full = lowrank(model, x, LowRankConfig(energy=1.0), CompressContext(progress=False))
    torch.testing.assert_close(full(x), model(x), rtol=1e-5, atol=1e-5)  # all energy kept: lossless
    with pytest.raises(ValueError, match="unknown layers"):
        lowrank(model, x, LowRankConfig(ranks={"nope": 2}))


def test_calibration_measures_output_error_and_config_errors():
    model, x = _decaying(toy_net(1)), torch.randn(4, 3, 8, 8)
    ctx = CompressContext(progress=False, data=[(torch.randn(4, 3, 8, 8), None)])
    lowrank(model, x, LowRankConfig(tradeoff=1.0, calibrate=True), ctx)
    picks = ctx.extras["lowrank"]
    assert picks and all(0 <= c.error < 1 for c in picks.values())
    info = analyze(model, x)["fc"]
    assert layer_macs(info) == 4 * 5 * 224
    with pytest.raises(ValueError, match="svd, channel, spatial"):
        LowRankConfig(methods="tucker")
    assert get_pass("lowrank")[0] is LowRankConfig


def test_default_is_an_error_budget():
    """No arguments: the summed per-layer error estimate stays within ``budget`` and grows with it."""
    from slimkit.compress.lowrank import candidates, choose_within

    model, x = _decaying(toy_net()), torch.randn(4, 3, 8, 8)
    totals = []
    for budget in (0.0, 0.03, 0.3):
        ctx = CompressContext(progress=False)
        out = lowrank(model, x, LowRankConfig(budget=budget), ctx)
        total = sum(c.error for c in ctx.extras["lowrank"].values())
        assert total <= budget + 1e-12
        totals.append((total, count_macs(out, x)))
    assert totals[0] == (0.0, count_macs(model, x))  # budget 0: untouched
    assert totals[2][1] < totals[1][1] <= totals[0][1]
    cands = candidates(analyze(model, x))
    picks = choose_within(cands, 0.3)  # the largest knob within the budget: any bigger one exceeds it
    assert sum(c.error for c in picks.values()) <= 0.3
    assert LowRankConfig().tradeoff is None and LowRankConfig().calibrate == "auto"
