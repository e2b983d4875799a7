import copy

import pytest
import torch

from slimkit.compress import compress
from slimkit.compress.base import CompressContext
from slimkit.compress.distill import DistillConfig, channel_maps, distill, few_shot
from slimkit.errors import SlimkitError

from _toys_b import tiny_data, tiny_model

KEEP = torch.tensor([0, 2, 3, 5, 7])  # conv1 output channels kept by the hand-made "pruning"


def hand_pruned(model):
    """Physically remove conv1 output channels and conv2's matching inputs (exact weight slices, as
    structured pruning leaves them); the function changes, so there is something to recover."""
    s = copy.deepcopy(model)
    c1, c2 = s.conv1, s.conv2
    n1 = torch.nn.Conv2d(8, len(KEEP), 3, padding=1)
    n2 = torch.nn.Conv2d(len(KEEP), 8, 3, padding=1)
    with torch.no_grad():
        n1.weight.copy_(c1.weight[KEEP]); n1.bias.copy_(c1.bias[KEEP])
        n2.weight.copy_(c2.weight[:, KEEP]); n2.bias.copy_(c2.bias)
    s.conv1, s.conv2 = n1, n2
    return s.eval()


def logit_mse(a, b, x):
    with torch.no_grad():
        return float(((a(x) - b(x)) ** 2).mean())


def test_channel_maps_recover_slices():
    m = tiny_model()
    s = hand_pruned(m)
    out_idx, in_idx = channel_maps(m.conv1.weight, s.conv1.weight)
    assert out_idx.tolist() == KEEP.tolist() and in_idx.tolist() == list(range(8))
    out_idx, in_idx = channel_maps(m.conv2.weight, s.conv2.weight)
    assert out_idx.tolist() == list(range(8)) and in_idx.tolist() == KEEP.tolist()
    assert channel_maps(m.conv1.weight, s.conv1.weight + 0.1) is None


def test_few_shot_takes_k_per_class():
    data = tiny_data(n_batches=4)
    X, Y = few_shot(data, 3, seed=0)
    assert torch.bincount(Y, minlength=4).tolist() == [3, 3, 3, 3] and X.shape == (12, 3, 8, 8)


@pytest.mark.parametrize("method", ["cross", "layerwise"])
def test_layerwise_methods_move_student_towards_teacher(method):
    teacher = tiny_model()
    student = hand_pruned(teacher)
    data = tiny_data(n_batches=4)
    x = torch.cat([b[0] for b in data])
    ctx = CompressContext(teacher=teacher, data=data, progress=False)
    cfg = DistillConfig(method=method, k=16, iters=30, lr=1e-2, finetune_epochs=0)
    out = distill(student, x[:1], cfg, ctx)
    assert set(out.distill_report) == {"stem", "conv1", "conv2", "side", "fc"}
    assert all(isinstance(v, float) for v in out.distill_report.values())
    assert logit_mse(out, teacher, x) < 0.7 * logit_mse(student, teacher, x)
    assert student.conv1.weight.shape == out.conv1.weight.shape == (5, 8, 3, 3)


def test_finetune_baseline_lowers_training_loss():
    teacher = tiny_model()
    student = hand_pruned(teacher)
    data = tiny_data(n_batches=4)
    X = torch.cat([b[0] for b in data]); Y = torch.cat([b[1] for b in data])
    ctx = CompressContext(teacher=teacher, data=data, progress=False)
    out = distill(student, X[:1], DistillConfig(method="finetune", k=16, finetune_epochs=30, finetune_lr=0.05), ctx)
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert float(ce(out(X), Y)) < float(ce(student(X), Y))
    assert out.distill_report == {}


def test_distill_through_compress_uses_original_as_teacher():
    teacher = tiny_model()
    student = hand_pruned(teacher)
    # compress() is handed the student; its own "teacher" is then the student, so channel maps are identity
    res = compress(student, torch.randn(1, 3, 8, 8), "distill(iters=5,finetune_epochs=1)", data=tiny_data(),
                   progress=False, latency_batches=())
    assert res.model.conv1.weight.shape == (5, 8, 3, 3)


def test_errors():
    with pytest.raises(SlimkitError, match="needs few-shot data"):
        distill(tiny_model(), torch.randn(1, 3, 8, 8), DistillConfig(), CompressContext())
    with pytest.raises(ValueError, match=r"mu must be in \[0, 1\]"):
        DistillConfig(mu=2.0)


def test_lsq_solver_is_the_exact_minimiser():
    teacher = tiny_model()
    student = hand_pruned(teacher)
    data = tiny_data(n_batches=4)
    x = torch.cat([b[0] for b in data])
    ctx = CompressContext(teacher=teacher, data=data, progress=False)
    cfg = dict(method="layerwise", k=16, finetune_epochs=0)
    lsq = distill(student, x[:1], DistillConfig(solver="lsq", ridge=0.0, **cfg), ctx)
    adam = distill(student, x[:1], DistillConfig(solver="adam", iters=30, lr=1e-2, **cfg), ctx)
    # stem and conv1 see the teacher's own input, so the teacher's slice is reachable: loss ~ 0
    assert lsq.distill_report["stem"] < 1e-10 and lsq.distill_report["conv1"] < 1e-10

    def conv2_error(m):  # full-data layer-wise loss of conv2, whose input is exact under both solvers
        seen = {}
        for net, key in ((m, "s"), (teacher, "t")):
            h = net.conv2.register_forward_hook(lambda mod, i, o, key=key: seen.__setitem__(key, o))
            with torch.no_grad():
                net(x)
            h.remove()
        return float(((seen["s"] - seen["t"]) ** 2).mean())

    assert 0 < conv2_error(lsq) <= conv2_error(adam)  # the closed form cannot be beaten
    with pytest.raises(ValueError, match="ridge"):
        DistillConfig(ridge=-1.0)


def test_imitation_target_fills_removed_channels_from_the_teacher():
    from slimkit.compress.distill import _imitation_target

    torch.manual_seed(0)
    ref = torch.nn.Conv2d(4, 3, 3, padding=1)
    x_t = torch.randn(6, 4, 5, 5)
    keep = torch.tensor([0, 2, 3])
    x_s = x_t[:, keep] + 0.1 * torch.randn(6, 3, 5, 5)
    cfg = DistillConfig(batch_size=4)
    full = x_t.clone()
    full[:, keep] = x_s
    with torch.no_grad():
        want = ref(full)[:, [1, 2]]
    got = _imitation_target(ref, x_s, x_t, keep, torch.tensor([1, 2]), cfg)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # nothing removed: the plain teacher layer on the student's input
    torch.testing.assert_close(_imitation_target(ref, x_t, x_t, torch.arange(4), torch.arange(3), cfg),
                               ref(x_t).detach(), rtol=1e-6, atol=1e-6)
