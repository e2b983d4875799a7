"""Importance sampling: the exact mixing formula, unbiased weights, reproducibility, bad options."""
import pytest
import torch

from slimkit.train.sampling import ImportanceSampler, UniformSampler, create_sampler, list_samplers


def test_mixing_formula_exact():
    s = ImportanceSampler(4, mixture=0.25, period=1)
    s.update([0, 1, 2, 3], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    expected = 0.75 * torch.tensor([1, 2, 3, 4], dtype=torch.float64) / 10 + 0.25 / 4
    torch.testing.assert_close(s.probs, expected)


def test_weights_make_the_estimator_unbiased():
    # E_{i~p}[w_i f_i] = sum_i p_i f_i / (n p_i) = mean(f), for any p.
    s = ImportanceSampler(5, mixture=0.1, period=1)
    s.update(range(5), torch.tensor([0.1, 5.0, 1.0, 0.0, 2.0]))
    f = torch.tensor([3.0, -1.0, 2.0, 7.0, 0.5], dtype=torch.float64)
    w = s.loss_weights(range(5)).double()
    assert float((s.probs * w * f).sum()) == pytest.approx(float(f.mean()), rel=1e-6)


def test_draws_follow_probs_and_are_reproducible():
    a = ImportanceSampler(3, seed=7, mixture=0.0, period=1, num_draws=20000)
    a.update([0, 1, 2], torch.tensor([1.0, 1.0, 2.0]))
    counts = torch.bincount(torch.tensor(list(a)), minlength=3).double() / 20000
    torch.testing.assert_close(counts, torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64), atol=0.015, rtol=0)
    b1 = list(ImportanceSampler(10, seed=3))
    b2 = list(ImportanceSampler(10, seed=3))
    assert b1 == b2 and b1 != list(ImportanceSampler(10, seed=4))


def test_period_delays_refresh():
    s = ImportanceSampler(2, mixture=0.0, period=3)
    s.update([0], [5.0])
    s.update([1], [1.0])
    torch.testing.assert_close(s.probs, torch.tensor([0.5, 0.5], dtype=torch.float64))
    s.update([1], [1.0])
    torch.testing.assert_close(s.probs, torch.tensor([5 / 6, 1 / 6], dtype=torch.float64))


def test_state_dict_round_trip():
    a = ImportanceSampler(6, seed=1, period=1)
    a.update([0, 1], [3.0, 0.5])
    b = ImportanceSampler(6, seed=99)
    b.load_state_dict(a.state_dict())
    assert list(a) == list(b)


def test_registry_and_bad_options():
    assert list_samplers() == ["importance", "uniform"]
    assert isinstance(create_sampler("uniform", 5, seed=0), UniformSampler)
    assert sorted(create_sampler("uniform", 5, seed=0)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="mixture"):
        create_sampler("importance", 5, mixture=1.5)
    with pytest.raises(ValueError, match="mixture"):
        create_sampler("importance", 5, mixture=-0.1)
    with pytest.raises(ValueError, match="unknown sampler 'x'"):
        create_sampler("x", 5)
