import copy
from dataclasses import dataclass

import pytest
import torch

import slimkit
from slimkit.compress import compress
from slimkit.compress.base import PassConfig, register_pass
from slimkit.errors import CompressionCheckError

from _tiny_resnet import tiny_data, tiny_model


@dataclass
class _BreakBias(PassConfig):  # test-only: claims to be lossless but shifts one bias
    name = "_test_break_bias"
    lossless = True


@register_pass(_BreakBias)
def _break_bias(model, example_inputs, config, context):
    new = copy.deepcopy(model)
    with torch.no_grad():
        new.conv2.bias += 1.0
    return new


@dataclass
class _BreakShape(PassConfig):  # test-only: makes conv1 output the wrong channel count
    name = "_test_break_shape"


@register_pass(_BreakShape)
def _break_shape(model, example_inputs, config, context):
    new = copy.deepcopy(model)
    new.conv1 = torch.nn.Conv2d(8, 5, 3, padding=1)
    return new


@dataclass
class _Identity(PassConfig):
    name = "_test_identity"
    lossless = True


@register_pass(_Identity)
def _identity(model, example_inputs, config, context):
    return copy.deepcopy(model)


def test_verb_is_the_subpackage():
    assert callable(slimkit.compress) and slimkit.compress.compress is compress


def test_input_model_untouched_and_report_filled():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 8, 8)
    data = tiny_data()
    res = compress(model, x, "_test_identity,pq(sub_dim=2,k=4,steps=20)", data=data, eval_data=data, progress=False,
                   latency_batches=(1, 4), latency_repeats=3)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert res.model is not model and type(model.conv1) is torch.nn.Conv2d
    rep = res.report
    assert rep.recipe == "_test_identity,pq(sub_dim=2,k=4,steps=20)"
    assert [r.name for r in rep.passes] == ["_test_identity", "pq"]
    assert rep.passes[0].check.startswith("forward ok; lossless: max abs diff 0")
    # MACs of TinyResNet at 8x8: stem 3*8*9*64 + conv1/conv2 8*8*9*64 each + side 8*8*64 + fc 16*4
    assert rep.before.macs == 3 * 8 * 9 * 64 + 2 * 8 * 8 * 9 * 64 + 8 * 8 * 64 + 16 * 4
    assert rep.after.weight_bytes < rep.before.weight_bytes / 3
    assert 0.0 <= rep.before.accuracy <= 1.0 and rep.after.accuracy is not None
    assert set(rep.latency) == {"before@b1", "after@b1", "before@b4", "after@b4"}
    assert rep.latency["before@b1"]["n"] == 3 and len(rep.latency["after@b4"]["loadavg"]) == 3
    md = rep.to_markdown()
    assert "| before |" in md and "`pq(sub_dim=2,k=4,steps=20)`" in md and "load avg" in md


def test_lossless_check_names_pass_and_module():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(CompressionCheckError, match=r"pass '_test_break_bias' is lossless.*first diverging module 'conv2'"):
        compress(tiny_model(), x, "_test_break_bias", progress=False, latency_batches=())


def test_forward_failure_names_pass_and_module():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(CompressionCheckError, match=r"pass '_test_break_shape': forward failed in module 'conv2'"):
        compress(tiny_model(), x, "_test_break_shape", progress=False, latency_batches=())


def test_accepts_config_list():
    from slimkit.compress.pq import PQConfig

    res = compress(tiny_model(), torch.randn(1, 3, 8, 8), [PQConfig(k=4, ec_iters=0)], progress=False, latency_batches=())
    assert res.report.recipe == "pq(k=4,ec_iters=0)"


def test_fold_prune_distill_pairs_every_layer():
    data = tiny_data(n_batches=4)
    res = compress(tiny_model(), data[0][0][:1], "fold,prune(macs=0.6),distill(method=layerwise,bnrecal=false,steps=1,views=1)",
                   data=data, progress=False, latency_batches=())
    # the teacher is the folded model (before the first lossy pass): every pruned layer maps onto it
    assert set(res.model.distill_report) == {"stem", "conv1", "conv2", "side", "fc"}
    assert not any(v.startswith("skipped") for v in res.model.distill_report.values())
    assert [r.name for r in res.report.passes] == ["fold", "prune", "distill"]
    assert res.report.after.macs <= 0.62 * res.report.before.macs


@dataclass
class _Scale(PassConfig):  # test-only lossy pass: multiplies the classifier by 10 (relative error 9)
    name = "_test_scale_fc"
    lossless = False


@register_pass(_Scale)
def _scale_fc(model, example_inputs, config, context):
    new = copy.deepcopy(model)
    with torch.no_grad():
        new.fc.weight *= 10.0
        new.fc.bias *= 10.0
    return new


def test_a_lossy_pass_before_recovery_is_judged_after_the_recovery():
    """Error 9 > the default bound 2: refused alone; followed by a recovery pass (distill) the bound is judged
    after that pass, against the teacher; an explicit bound for the pass still applies at once."""
    from slimkit.compress.check import CheckConfig

    model, data = tiny_model(), tiny_data(n_batches=2)
    x = data[0][0][:1]
    with pytest.raises(CompressionCheckError, match=r"'_test_scale_fc': relative output error 9 > bound 2"):
        compress(model, x, "_test_scale_fc", data=data, progress=False, latency_batches=())
    # distill's own bound is raised here: the point is where the scaling pass's bound is judged
    res = compress(model, x, "_test_scale_fc,distill(steps=2,views=1)", data=data, progress=False,
                   latency_batches=(), check=CheckConfig(max_rel_error={"distill": 100.0}))
    first, last = res.report.passes
    assert "bound judged after the recovery pass" in first.check and "vs the teacher" in last.check
    with pytest.raises(CompressionCheckError, match="bound 5"):
        compress(model, x, "_test_scale_fc,distill(steps=1)", data=data, progress=False, latency_batches=(),
                 check=CheckConfig(max_rel_error={"_test_scale_fc": 5.0}))
