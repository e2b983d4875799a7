import pytest
import torch

from _toy_graphs import ToyNet, assert_untouched, randomize_bn, state_copy, one_thread  # noqa: F401 (autouse fixture)
from slimkit.compress.base import CompressContext, get_pass
from slimkit.compress.budget import BudgetConfig, allocate, budget, weight_bytes
from slimkit.profile.counting import count_macs


def _model(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(ToyNet(width=8), seed).eval()


def test_allocate_minimises_worst_layer_error_at_target():
    options = {"a": [(0, 0), (10, 0.2), (20, 0.5)], "b": [(0, 0), (10, 0.1), (30, 0.6)]}

    def metric(levels):
        return 100 - sum(options[k][v][0] for k, v in levels.items())

    assert allocate(options, metric, 85) == ({"a": 1, "b": 1}, 80, True)  # eps 0.2: a->1, b->1
    assert allocate(options, metric, 75) == ({"a": 2, "b": 1}, 70, True)  # eps 0.5
    assert allocate(options, metric, 100) == ({"a": 0, "b": 0}, 100, True)
    assert allocate(options, metric, 10) == ({"a": 2, "b": 2}, 50, False)  # unreachable: most compressed


@pytest.mark.parametrize("method", ["prune", "lowrank"])
def test_budget_meets_macs_target(method):
    model, x = _model(), torch.randn(8, 3, 8, 8)
    before = state_copy(model)
    ctx = CompressContext(progress=False)
    out = budget(model, x, BudgetConfig(target_macs=0.6, method=method, steps=4), ctx)
    info = ctx.extras["budget"]
    assert info["met"] and info["metric"] == "macs"
    assert count_macs(out, x) <= 0.6 * count_macs(model, x) and info["achieved"] == count_macs(out, x)
    assert out(x).shape == (8, 5) and 0 < info["output_error"] < 1.5
    assert_untouched(model, before)


def test_budget_bytes_and_latency_targets():
    model, x = _model(1), torch.randn(4, 3, 8, 8)
    ctx = CompressContext(progress=False)
    out = budget(model, x, BudgetConfig(target_bytes=0.7, method="lowrank", steps=4), ctx)
    assert weight_bytes(out) <= 0.7 * weight_bytes(model) and ctx.extras["budget"]["metric"] == "bytes"
    ctx = CompressContext(progress=False)
    budget(model, x, BudgetConfig(target_latency_ms=1e6, steps=2), ctx)  # already met: nothing pruned
    assert ctx.extras["budget"]["met"] and set(ctx.extras["budget"]["levels"].values()) == {0}


@pytest.mark.parametrize("method", ["prune", "lowrank"])
def test_budget_bytes_are_the_reports_weight_bytes(method):
    from slimkit.compress.api import model_stats
    from slimkit.profile import profile

    model, x = _model(2), torch.randn(4, 3, 8, 8)
    assert any(True for _ in model.buffers())  # BN statistics: counted by the report, so by the budget too
    ctx = CompressContext(progress=False)
    out = budget(model, x, BudgetConfig(target_bytes=0.7, method=method, steps=4), ctx)
    info = ctx.extras["budget"]
    assert info["target"] == pytest.approx(0.7 * model_stats(model, x).weight_bytes)
    assert info["achieved"] == model_stats(out, x).weight_bytes
    assert model_stats(out, x).weight_bytes == profile(out, x, batch_sizes=(), progress=False).weight_bytes


def test_budget_latency_is_timed_in_the_registered_runtime(monkeypatch):
    from slimkit.profile.runtimes import RUNTIMES, Runtime

    calls = []

    def build(model, example_inputs, *, threads, device, output):
        def run(*args, **kwargs):
            calls.append(args[0].shape[0])
            return model(*args, **kwargs)
        return run

    monkeypatch.setitem(RUNTIMES.entries, "counted", Runtime("counted", build))
    model, x = _model(3), torch.randn(4, 3, 8, 8)
    ctx = CompressContext(progress=False)
    budget(model, x, BudgetConfig(target_latency_ms=1e6, steps=2, runtime="counted"), ctx)
    assert ctx.extras["budget"]["met"] and ctx.extras["budget"]["metric"] == "latency_ms"
    assert len(calls) >= 10 and set(calls) == {1}  # timed at batch 1 through the runtime's runner
    with pytest.raises(ValueError, match="known runtimes"):
        BudgetConfig(target_latency_ms=1.0, runtime="nope")


def test_missed_budget_target_reaches_the_report():
    import json

    from slimkit.compress import compress

    model, x = _model(4), torch.randn(4, 3, 8, 8)
    with pytest.warns(UserWarning, match="missed its target"):
        missed = compress(model, x, "budget(target_macs=0.01,steps=2)", progress=False, latency_batches=()).report
    data = json.loads(json.dumps(missed.to_dict()))  # what report.json holds
    assert data["targets_met"] is False
    target = data["passes"][0]["target"]
    assert target["met"] is False and target["metric"] == "macs" and target["achieved"] > target["target"]
    assert target["achieved"] == missed.after.macs
    assert "**MISSED**" in missed.to_markdown() and missed.missed_targets() == [missed.passes[0]]
    met = compress(model, x, "budget(target_macs=0.9,steps=2)", progress=False, latency_batches=()).report
    assert met.targets_met is True and met.passes[0].target["met"] and "MISSED" not in met.to_markdown()
    assert compress(model, x, "fold", progress=False, latency_batches=()).report.targets_met is None


def test_budget_drops_a_block_that_does_nothing():
    # block1 with a zero BN-scaled residual branch returns relu(x) = x: dropping it is lossless, so the first
    # threshold (error 0) meets a target that channel pruning alone meets only with an output error
    from slimkit.compress.drop import replace

    model, x = _model(5), torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        model.block1.bn2.weight.zero_()
        model.block1.bn2.bias.zero_()
    without = state_copy(model)
    ref = _model(5)
    ref.load_state_dict(without)
    replace(ref, "block1", torch.nn.Identity())
    target = count_macs(ref, x) + 1
    ctx = CompressContext(progress=False)
    out = budget(model, x, BudgetConfig(target_macs=target, blocks=True, steps=4), ctx)
    info = ctx.extras["budget"]
    assert info["met"] and info["levels"]["block:block1"] == 1 and out.dropped_blocks == ["block1"]
    assert isinstance(out.block1, torch.nn.Identity) and count_macs(out, x) <= target
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
    ctx = CompressContext(progress=False)
    budget(model, x, BudgetConfig(target_macs=target, steps=4), ctx)
    assert ctx.extras["budget"]["met"] and ctx.extras["budget"]["output_error"] > 1e-3
    assert not any(isinstance(k, str) for k in ctx.extras["budget"]["levels"])


def test_budget_uncoupled_leaves_the_residual_stream_alone():
    model, x = _model(6), torch.randn(8, 3, 8, 8)
    ctx = CompressContext(progress=False)
    out = budget(model, x, BudgetConfig(target_macs=0.7, coupled=False, steps=4), ctx)
    assert ctx.extras["budget"]["met"] and count_macs(out, x) <= 0.7 * count_macs(model, x)
    # the stream (stem -> block1 -> block2's shortcut) keeps its 8 channels; only block-internal ones go
    assert out.stem.out_channels == out.block1.conv2.out_channels == out.block2.conv1.in_channels == 8
    assert out.block1.conv1.out_channels + out.block2.conv1.out_channels + out.side.out_channels < 8 + 16 + 6


def test_budget_fraction_of_the_original_model():
    model, x = _model(7), torch.randn(8, 3, 8, 8)
    smaller = budget(model, x, BudgetConfig(target_macs=0.8, steps=4), CompressContext(progress=False))
    ctx = CompressContext(teacher=model, progress=False)  # compress() passes the model it was given as teacher
    out = budget(smaller, x, BudgetConfig(target_macs=0.6, of="original", steps=4), ctx)
    assert ctx.extras["budget"]["target"] == pytest.approx(0.6 * count_macs(model, x))
    assert ctx.extras["budget"]["met"] and count_macs(out, x) <= 0.6 * count_macs(model, x)
    ctx = CompressContext(teacher=model, progress=False)
    budget(smaller, x, BudgetConfig(target_macs=0.6, steps=4), ctx)  # default: a fraction of the pass's input
    assert ctx.extras["budget"]["target"] == pytest.approx(0.6 * count_macs(smaller, x))
    with pytest.raises(ValueError, match="needs the original model"):
        budget(smaller, x, BudgetConfig(target_macs=0.6, of="original"), CompressContext(progress=False))


def test_budget_after_drop_aims_at_the_original_through_compress():
    from slimkit.compress import compress
    from slimkit.compress.check import CheckConfig

    model, x = _model(8), torch.randn(8, 3, 8, 8)
    unchecked = CheckConfig(max_rel_error={"*": float("inf")}, min_agreement={"*": 0.0})  # shapes only here
    res = compress(model, x, "drop(blocks=1),budget(target_macs=0.5,of=original,coupled=false,steps=4)",
                   data=(x, torch.zeros(8, dtype=torch.long)), progress=False, latency_batches=(), check=unchecked)
    target = res.report.passes[1].target
    assert len(res.model.dropped_blocks) == 1 and target["target"] == pytest.approx(0.5 * count_macs(model, x))
    assert target["met"] and count_macs(res.model, x) <= 0.5 * count_macs(model, x)


def test_budget_recal_measures_candidates_after_re_estimating_their_statistics():
    """recal=true: a candidate whose only fault is stale BatchNorm statistics measures as error 0 (its statistics
    re-estimated on the calibration inputs, on a copy: the candidate keeps its own), where recal=false sees the
    fault; through the pass the MAC target is met."""
    import copy

    from slimkit.compress.bnrecal import collecting_statistics
    from slimkit.compress.budget import _Sensitivity
    from slimkit.model_io import Example

    model, x = _model(), torch.randn(16, 3, 8, 8)
    with collecting_statistics(model):  # the reference holds the calibration inputs' own statistics
        model(x)
    batches = [Example.of(x)]
    stale = copy.deepcopy(model)
    with torch.no_grad():
        for m in stale.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.5)
                m.running_var.mul_(2.0)
    before = state_copy(stale)
    assert _Sensitivity(model, batches, recal=True)(stale) < 1e-5
    assert _Sensitivity(model, batches)(stale) > 0.05
    assert_untouched(stale, before)
    ctx = CompressContext(progress=False)
    out = budget(model, x, BudgetConfig(target_macs=0.6, steps=4, recal=True), ctx)
    assert ctx.extras["budget"]["met"] and count_macs(out, x) <= 0.6 * count_macs(model, x)


def test_budget_config_errors():
    with pytest.raises(ValueError, match="exactly one"):
        BudgetConfig()
    with pytest.raises(ValueError, match="exactly one"):
        BudgetConfig(target_macs=0.5, target_bytes=0.5)
    with pytest.raises(ValueError, match="method"):
        BudgetConfig(target_macs=0.5, method="quantize")
    with pytest.raises(ValueError, match="blocks=true needs method=prune"):
        BudgetConfig(target_macs=0.5, method="lowrank", blocks=True)
    with pytest.raises(ValueError, match="of must be input or original"):
        BudgetConfig(target_macs=0.5, of="teacher")
    assert get_pass("budget")[0] is BudgetConfig
