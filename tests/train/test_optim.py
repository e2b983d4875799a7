"""Optimizer contract and method checks for the registry's optimizers (fw-adam, fw-sgd, sgd-g2, ...)."""
import copy

import pytest
import torch

from slimkit.train.optim import create_optimizer, list_optimizers
from slimkit.train.optim.frank_wolfe import FrankWolfe
from slimkit.train.optim.sgd_g2 import SGDG2


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _batch(i):
    g = torch.Generator().manual_seed(i)
    return torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)


def _train(model, opt, steps, start=0):
    for i in range(start, start + steps):
        x, y = _batch(i)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        closure()
        opt.step(closure)


OPTS = {"fw-adam": dict(radius=1e-2, inner_steps=3), "fw-sgd": dict(radius=1e-2, inner_steps=2, lr=0.05),
        "sgd-g2": dict(lr=0.05), "adam": {}, "sgd": dict(lr=0.05)}


def test_registry_lists_methods():
    assert {"fw-adam", "fw-sgd", "sgd-g2", "sgd", "adam", "adamw"} <= set(list_optimizers())
    with pytest.raises(ValueError, match="unknown optimizer 'fw'.*fw-adam"):
        create_optimizer("fw", _model().parameters())


@pytest.mark.parametrize("name", sorted(OPTS))
def test_state_dict_round_trip_continues_identically(name):
    a = _model()
    opt_a = create_optimizer(name, a.parameters(), **OPTS[name])
    _train(a, opt_a, 4)
    b = copy.deepcopy(a)
    opt_b = create_optimizer(name, b.parameters(), **OPTS[name])
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    _train(a, opt_a, 3, start=4)
    _train(b, opt_b, 3, start=4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fw-adam", "sgd-g2"])
def test_param_groups_and_params_without_grad(name):
    model = _model()
    frozen = torch.nn.Parameter(torch.ones(3))  # never receives a gradient
    groups = [{"params": model[0].parameters()}, {"params": list(model[2].parameters()) + [frozen], "lr": 0.01}]
    opt = create_optimizer(name, groups, **{k: v for k, v in OPTS[name].items() if k != "lr"})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.01
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, 3)
    torch.testing.assert_close(frozen.detach(), torch.ones(3), rtol=0, atol=0)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_fw_with_one_inner_step_is_adam_on_normalised_gradients():
    a, b = _model(), _model()
    fw = FrankWolfe(a.parameters(), radius=0.3, inner_steps=1, lr=1e-2)
    adam = torch.optim.Adam(b.parameters(), lr=1e-2)
    for i in range(5):
        x, y = _batch(i)
        for m, opt in ((a, fw), (b, adam)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
        for p in b.parameters():
            p.grad /= p.grad.norm()  # the reference: Adam on per-tensor normalised gradients
        fw.step()
        adam.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_fw_inner_iterates_stay_in_the_ball_and_restore():
    p = torch.nn.Parameter(torch.zeros(5))
    fw = FrankWolfe([p], radius=0.5, inner_steps=3, base="sgd", lr=1.0, momentum=0.0)
    grads = [torch.tensor([1.0, 0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0, 0]), torch.tensor([0, 0, 1.0, 0, 0])]
    delta = torch.zeros(5)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        fw.step()
        delta = (1 - 1 / t) * delta - (0.5 / t) * g
        if t < 3:
            torch.testing.assert_close(p.detach(), delta)  # w_k + D_t with w_k = 0
            assert p.detach().norm() <= 0.5 + 1e-7
    # outer step: restore w_k = 0, gradient -D_T / r, plain SGD with lr 1 -> p = D_T / r
    torch.testing.assert_close(p.detach(), delta / 0.5)


def _authors_fw_rule(grad_fn, w0, r, K):
    """The update rule of the authors' public fgsm.py (FGSM class, mergeadam), re-stated: per inner step t,
    d = g/||g||, buf = (1 - 1/t) buf - (r/t) d, w <- w + buf; at t = K restore w0 and hand -buf/r to the base
    optimizer (here plain SGD with lr 1). Returns the probe points and the weights after the outer step."""
    w, buf, probes = w0.clone(), torch.zeros_like(w0), []
    for t in range(1, K + 1):
        g = grad_fn(t, w)
        buf = (1 - 1 / t) * buf - (r / t) * g / g.norm()
        w = w + buf
        probes.append(w.clone())
    return probes, w0 - (-buf / r)


def test_fw_cumulative_iterate_equals_the_authors_rule_on_a_3_step_example():
    # f_t(w) = 0.5 ||w - c_t||^2 with c = (1,0), (0,1), (0,0): the third gradient depends on where step 2 left w.
    centers = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])]
    r = 0.5

    def grad(t, w):
        return w - centers[t - 1]

    results = {}
    for iterate in ("cumulative", "textbook"):
        p = torch.nn.Parameter(torch.zeros(2))
        fw = FrankWolfe([p], lr=1.0, radius=r, inner_steps=3, base="sgd", momentum=0.0, iterate=iterate)
        probes = []
        for t in range(1, 4):
            p.grad = grad(t, p.detach().clone())
            fw.step()
            probes.append(p.detach().clone())
        results[iterate] = probes
    ref_probes, ref_final = _authors_fw_rule(grad, torch.zeros(2), r, 3)
    for got, want in zip(results["cumulative"][:2], ref_probes[:2]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    torch.testing.assert_close(results["cumulative"][2], ref_final, rtol=0, atol=1e-7)
    # Hand values: w1 = (0.5, 0); w2 = w1 + D2 = (0.5 + 0.25 - 0.25/sqrt(1.25), 0.5/sqrt(1.25));
    # D3 = (2/3) D2 - (1/6) w2/||w2||; final w = -D3 / r = -2 D3 (SGD, lr 1, from w0 = 0).
    torch.testing.assert_close(results["cumulative"][1], torch.tensor([0.6381966, 0.2236068]), rtol=0, atol=1e-6)
    torch.testing.assert_close(results["cumulative"][2], torch.tensor([-0.1303207, 0.1879211]), rtol=0, atol=1e-6)
    # The textbook iterate probes w0 + D2 instead: same first two probes' directions, a different outer step.
    torch.testing.assert_close(results["textbook"][1], torch.tensor([0.1381966, 0.2236068]), rtol=0, atol=1e-6)
    torch.testing.assert_close(results["textbook"][2], torch.tensor([0.0090184, 0.0145921]), rtol=0, atol=1e-6)


def test_fw_radius_defaults_to_lr_and_anchor_weights_swap_back():
    p = torch.nn.Parameter(torch.zeros(3))
    fw = create_optimizer("fw-adam", [p], lr=0.02, inner_steps=3)
    assert fw.param_groups[0]["radius"] == 0.02
    p.grad = torch.tensor([1.0, 2.0, 2.0])
    fw.step()  # probe point w_k + D_1 = -0.02 g/||g||
    probe = p.detach().clone()
    torch.testing.assert_close(probe, torch.tensor([-1.0, -2.0, -2.0]) * 0.02 / 3)
    with fw.anchor_weights():
        torch.testing.assert_close(p.detach(), torch.zeros(3), rtol=0, atol=0)
    torch.testing.assert_close(p.detach(), probe, rtol=0, atol=0)
    with pytest.raises(ValueError, match="iterate must be one of"):
        FrankWolfe([p], iterate="sum")


def test_sgd_g2_step_size_rule_on_a_quadratic():
    # f = a/2 ||theta||^2: g = a theta, g' = a (1 - h a) theta, so h_opt = 2/a exactly.
    a, h, beta = 4.0, 0.1, 0.9
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = SGDG2([theta], lr=h, beta=beta)

    def closure():
        opt.zero_grad()
        loss = 0.5 * a * theta.pow(2).sum()
        loss.backward()
        return loss

    closure()
    start = theta.detach().clone()
    opt.step(closure)
    h_new = beta * h + (1 - beta) * (2 / a)  # h_opt = 0.5 >= h
    assert opt.param_groups[0]["lr"] == pytest.approx(h_new)
    torch.testing.assert_close(theta.detach(), start - h_new * a * start)
    # A smaller h_opt than h takes (1 - beta) h_opt.
    opt.param_groups[0]["lr"] = 1.0
    closure()
    opt.step(closure)
    assert opt.param_groups[0]["lr"] == pytest.approx((1 - beta) * 2 / a)


def test_sgd_g2_needs_closure_and_gradients():
    p = torch.nn.Parameter(torch.ones(2))
    opt = SGDG2([p])
    assert SGDG2.needs_closure
    with pytest.raises(ValueError, match="closure"):
        opt.step(None)
    with pytest.raises(RuntimeError, match="backward"):
        opt.step(lambda: torch.tensor(0.0))


@pytest.mark.parametrize("name, kwargs, match", [
    ("fw-adam", dict(radius=0), "radius must be > 0"),
    ("fw-adam", dict(radius=-1), "radius must be > 0"),
    ("fw-adam", dict(inner_steps=0), "inner_steps"),
    ("sgd-g2", dict(lr=0), "must be > 0"),
    ("sgd-g2", dict(beta=1.0), "beta"),
])
def test_invalid_hyper_parameters(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_optimizer(name, _model().parameters(), **kwargs)
