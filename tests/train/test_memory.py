"""Memory-bounded training: same outputs and gradients, fewer saved activation bytes, clear budget errors."""
import copy
import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.train.memory import apply_memory_budget, measure_activation_memory, tune_batch_size


def _mlp(depth=12, width=64):
    torch.manual_seed(0)
    layers = [m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())]
    return nn.Sequential(*layers, nn.Linear(width, 4))


def _weights(m):
    return sum(p.numel() * p.element_size() for p in m.parameters())


def test_measure_counts_saved_activations_exactly():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    x = torch.randn(4, 8)
    # Linear saves its input (4x8); ReLU saves its output (4x16); the loss (pow) saves the ReLU output again
    # (same storage, counted once). float32.
    assert measure_activation_memory(m, x) == 4 * (4 * 8 + 4 * 16)


def test_budget_keeps_outputs_and_gradients_and_cuts_memory():
    model = _mlp()
    x = torch.randn(32, 64)
    before = measure_activation_memory(model, x)
    budget = 2 * _weights(model) + before // 2
    small, plan = apply_memory_budget(model, x, budget, return_plan=True)
    assert plan.fits and plan.wrapped
    after = measure_activation_memory(small, x)
    assert after <= before // 2
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=0)
    small(x).sum().backward()
    model(x).sum().backward()
    for a, b in zip(small.parameters(), model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


def test_input_model_untouched_and_generous_budget_is_a_copy():
    model = _mlp(depth=3)
    n_before = len(model)
    same = apply_memory_budget(model, torch.randn(2, 64), 10 ** 9)
    assert same is not model and len(model) == n_before


def test_budget_smaller_than_model_raises():
    model = _mlp(depth=2)
    with pytest.raises(SlimkitError, match="smaller than the model's weights"):
        apply_memory_budget(model, torch.randn(2, 64), _weights(model))


def test_tuner_finds_largest_fitting_batch_and_scales_lr():
    model = _mlp(depth=2, width=32)
    per_sample = measure_activation_memory(model, torch.randn(1, 32))
    budget = 2 * _weights(model) + 16 * per_sample + per_sample // 2
    res = tune_batch_size(model, lambda b: torch.randn(b, 32), budget, base_batch=8, base_lr=0.1,
                          candidates=[1, 2, 4, 8, 16, 32], steps=1)
    assert res.largest_batch == 16
    assert res.best_batch in (1, 2, 4, 8, 16)
    assert res.best_lr == pytest.approx(0.1 * res.best_batch / 8)


def test_checkpoint_recompute_does_not_update_batchnorm_stats_twice():
    from slimkit.train.memory import Checkpointed

    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    plain, wrapped = copy.deepcopy(seg).train(), Checkpointed(copy.deepcopy(seg)).train()
    x = torch.randn(8, 3, 10, 10)
    for _ in range(3):
        plain(x).square().sum().backward()
        wrapped(x).square().sum().backward()
    for a, b in zip(plain.modules(), wrapped.segment.modules()):
        if isinstance(a, nn.BatchNorm2d):
            torch.testing.assert_close(b.running_mean, a.running_mean, rtol=0, atol=0)
            torch.testing.assert_close(b.running_var, a.running_var, rtol=0, atol=0)
            assert int(b.num_batches_tracked) == int(a.num_batches_tracked) == 3
    for p, q in zip(plain.parameters(), wrapped.segment.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)
