"""The profiler over the model registry: every zoo model is fully counted (no unsupported ops).

Small models run by default; the whole registry is in the slow tier (EfficientNet-B7 at full
resolution takes a while on 2 cores). A model missing from the registry fails, it is not skipped.
"""
import pytest
import torch

import slimkit
from slimkit.models import create_model, get_model_info, list_models

SMALL = ("lenet5", "resnet20", "rnn_classifier", "mobilenet_v2")


def _inputs(name):
    info = get_model_info(name)
    if info.input_dtype.is_floating_point:
        return torch.randn(1, *info.input_size, dtype=info.input_dtype)
    return torch.randint(0, 2, (1, *info.input_size), dtype=info.input_dtype)


def _check(name):
    model = create_model(name)
    prof = slimkit.profile(model, _inputs(name), batch_sizes=(), progress=False, name=name)
    assert prof.unsupported_ops == {}, f"{name}: uncounted ops {prof.unsupported_ops}"
    assert prof.macs > 0 and prof.params == sum(p.numel() for p in model.parameters())
    top = prof.by_module(depth=1)
    # the root holds the total; its children hold all but what the root's own forward computes
    assert top[""]["macs"] == prof.macs >= sum(v["macs"] for k, v in top.items() if k)
    assert prof.peak_activation_bytes > 0


def test_small_models_are_in_the_registry():
    assert set(SMALL) <= set(list_models())  # so the slow tier's list below cannot come up empty either


@pytest.mark.parametrize("name", SMALL)
def test_small_zoo_models_fully_counted(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_fully_counted(name):
    _check(name)
