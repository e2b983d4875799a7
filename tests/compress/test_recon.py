"""Channel selection by reconstruction: the greedy step is the exact best single removal, the returned refit
is the exact least-squares minimiser on the kept columns, and the layer stage re-selects pruned chains."""
import itertools

import torch

from slimkit.compress.recon import Quadratic, greedy_select, objective, solve


def _problem(seed=0, channels=6, k=2, out=3, rows=300):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, channels * k + 1, generator=g, dtype=torch.float64)
    a[:, -1] = 1.0  # bias column: never removed
    a[:, 2:4] += 0.9 * a[:, 0:2]  # channel 1 nearly duplicates channel 0
    y = a[:, :6] @ torch.randn(6, out, generator=g, dtype=torch.float64) + 0.1 * torch.randn(rows, out, generator=g,
                                                                                              dtype=torch.float64)
    return a, y, Quadratic(a.T @ a, a.T @ y, torch.arange(channels * k).reshape(channels, k))


def _best_subset(q, n_keep):
    return min(itertools.combinations(range(q.groups.shape[0]), n_keep), key=lambda s: objective(q, *solve(q, list(s), 0.0)))


def test_one_removal_is_the_brute_force_optimum():
    for seed in range(4):
        _, _, q = _problem(seed)
        assert greedy_select([q], 5, ridge=0.0).tolist() == list(_best_subset(q, 5))


def test_refit_is_the_exact_least_squares_minimiser():
    a, y, q = _problem(1)
    keep = greedy_select([q], 3, ridge=0.0)
    w, cols = solve(q, keep, 0.0)
    ref = torch.linalg.lstsq(a[:, cols], y).solution
    assert torch.allclose(w, ref, rtol=0, atol=1e-9)
    assert cols[-1].item() == a.shape[1] - 1  # the bias column stays


def test_downdated_costs_match_fresh_solves():
    """Each greedy removal raises the objective by exactly the predicted amount (no drift in the downdates)."""
    _, _, q = _problem(2, channels=8)
    prev = objective(q, *solve(q, list(range(8)), 0.0))
    for n_keep in range(7, 0, -1):
        keep = greedy_select([q], n_keep, ridge=0.0)
        cur = objective(q, *solve(q, keep, 0.0))
        assert cur >= prev - 1e-9
        prev = cur
    assert greedy_select([q], 8, ridge=0.0).tolist() == list(range(8))


def test_two_consumers_one_removal_minimises_the_summed_error():
    _, _, q1 = _problem(3)
    _, _, q2 = _problem(4)
    total = lambda s: objective(q1, *solve(q1, list(s), 0.0)) + objective(q2, *solve(q2, list(s), 0.0))  # noqa: E731
    best = min(itertools.combinations(range(6), 5), key=total)
    assert greedy_select([q1, q2], 5, ridge=0.0).tolist() == list(best)
