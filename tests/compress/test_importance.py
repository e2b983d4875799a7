import pytest
import torch
from torch import nn

from _toy_graphs import toy_net, one_thread  # noqa: F401 (autouse fixture)
from slimkit.compress.graph import build_graph
from slimkit.compress.importance import (get_importance, group_scores, list_importances, record,
                                         redundancy_residuals, gram)
from slimkit.model_io import Example


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


A, B = ("a.weight", 0), ("b.weight", 0)  # producer keys: (weight, output dim)


def _graph():
    m = Two().eval()
    with torch.no_grad():
        m.a.weight.copy_(torch.tensor([[1., 1, 1], [2, 0, 0], [0, 0, 0.3], [-3, 3, 3]]))
        m.bn.weight.copy_(torch.tensor([0.1, 2.0, 1.0, 0.5]))
    return build_graph(m, torch.randn(5, 3))


def test_magnitude_and_bn_scores_exact():
    g = _graph()
    assert list_importances() == ["bn_scale", "group_l1", "l1", "l2", "redundancy", "vote"]
    l1 = get_importance("l1")(g)[A]
    torch.testing.assert_close(l1, torch.tensor([1.0, 2 / 3, 0.1, 3.0]))
    torch.testing.assert_close(get_importance("bn_scale")(g)[A], torch.tensor([0.1, 2.0, 1.0, 0.5]))
    scores = group_scores(g, {A: torch.tensor([1.0, 2.0, 3.0, 2.0]), B: torch.ones(2)})
    assert sorted(scores.values()) == pytest.approx([0.5, 1.0, 1.0, 1.5])  # divided by the layer mean
    with pytest.raises(ValueError, match="expected one of"):
        get_importance("nope")


def test_group_l1_averages_producer_consumer_and_bn_scale_each_over_its_mean():
    g = _graph()
    m = g.cap.model
    with torch.no_grad():
        m.b.weight.copy_(torch.tensor([[1., 0, 2, 1], [1, 2, 0, 1]]))
    prod = torch.tensor([3.0, 2.0, 0.3, 9.0])  # a's output filters (L1)
    cons = torch.tensor([2.0, 2.0, 2.0, 2.0])  # b's input columns
    bn = torch.tensor([0.1, 2.0, 1.0, 0.5])
    want = sum(v / v.mean() for v in (prod, cons, bn)) / 3
    torch.testing.assert_close(get_importance("group_l1")(g)[A], want)
    assert get_importance("group_l1")(g)[B].shape == (2,)  # the output layer's units: its own filter only


def test_vote_counts_top_units_per_sample():
    g = _graph()
    acts = torch.tensor([[5., 4, 0, 1], [3, 9, 1, 0], [2, 8, 7, 0]])
    votes = get_importance("vote")(g, lambda wanted: {s: acts for s in wanted}, q=0.5)[A]
    torch.testing.assert_close(votes, torch.tensor([2 / 3, 1.0, 1 / 3, 0.0]) + 1e-6)


def test_redundancy_residual_zero_for_dependent_unit():
    torch.manual_seed(0)
    a = torch.randn(50, 4)
    a[:, 3] = 2 * a[:, 0] - a[:, 1]
    res = redundancy_residuals(gram(a))
    assert float(res[3]) < 1e-4 and float(res[2]) > 0.5
    model, x = toy_net(), torch.randn(2, 3, 8, 8)
    g = build_graph(model, x)
    relu = next(n.name for n in g.cap.graph.nodes if n.op == "call_function" and "relu" in str(n.target))
    rec = record(g, [Example.of(x), Example.of(x[:1])], [relu])
    assert rec[relu].shape == (3, 4, 8, 8)
    torch.testing.assert_close(rec[relu][:2], torch.relu(model.bn(model.stem(x))))


def test_gram_solve_survives_dead_units():
    from slimkit.compress.importance import gram_solve

    a = torch.randn(50, 4, dtype=torch.float64)
    a[:, 2] = 0  # a dead ReLU unit: a zero row and column in the Gram matrix
    g = a.T @ a
    x = gram_solve(g, g[:, :1])
    assert torch.isfinite(x).all()
    torch.testing.assert_close(a @ x, a[:, :1], rtol=1e-6, atol=1e-6)  # still reproduces unit 0 exactly
    zero = torch.zeros(3, 3, dtype=torch.float64)  # every kept unit dead
    assert torch.equal(gram_solve(zero, torch.ones(3, 1, dtype=torch.float64)), torch.zeros(3, 1, dtype=torch.float64))
    res = redundancy_residuals(g)
    assert float(res[2]) == 0.0 and (res[[0, 1, 3]] > 0.5).all()  # the dead unit is exactly redundant
