import copy

import pytest
import torch

from slimkit.compress import compress
from slimkit.compress.base import CompressContext
from slimkit.compress.distill import DistillConfig, channel_maps, distill, few_shot
from slimkit.errors import SlimkitError

from _tiny_resnet import tiny_data, tiny_model

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


def with_record(student, teacher):
    """Attach the prune record prune() would leave for ``hand_pruned`` (the contract in surgery.PruneRecord)."""
    from slimkit.compress.surgery import RECORD_ATTR, Chain, PruneRecord

    sizes = {n: (m.weight.shape[0], m.weight.shape[1]) for n, m in teacher.named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    rec = PruneRecord(kept={"conv1": (KEEP, None), "conv2": (None, KEEP)},
                      chains=[Chain("conv1", ["conv1.bias"], ["conv2"], 8, KEEP.clone())], sizes=sizes)
    setattr(student, RECORD_ATTR, rec)
    return student


def _io(model, name, x):
    seen = {}
    h = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        model(x)
    h.remove()
    return seen["x"], seen["y"]


@pytest.mark.parametrize("method", ["cross", "layerwise"])
def test_layerwise_methods_move_student_towards_teacher(method):
    teacher = tiny_model()
    student = hand_pruned(teacher)
    data = tiny_data(n_batches=4)
    x = torch.cat([b[0] for b in data])
    ctx = CompressContext(teacher=teacher, data=data, progress=False)
    out = distill(student, x[:1], DistillConfig(method=method, bnrecal=False, select="keep", k=None, views=1, steps=0), ctx)
    assert set(out.distill_report) == {"stem", "conv1", "conv2", "side", "fc"}
    assert logit_mse(out, teacher, x) < 0.7 * logit_mse(student, teacher, x)
    assert student.conv1.weight.shape == out.conv1.weight.shape == (5, 8, 3, 3)


def test_function_matching_lowers_the_kl_to_the_teacher():
    from slimkit.compress.matching import kd_loss

    teacher = tiny_model()
    student = hand_pruned(teacher)
    data = tiny_data(n_batches=4)
    X = torch.cat([b[0] for b in data])
    ctx = CompressContext(teacher=teacher, data=data, progress=False)
    out = distill(student, X[:1], DistillConfig(method="finetune", bnrecal=False, k=None, steps=60, lr=0.05, batch_size=16), ctx)
    with torch.no_grad():
        assert float(kd_loss(out(X), teacher(X), 1.0)) < 0.8 * float(kd_loss(student(X), teacher(X), 1.0))
    assert out.distill_report == {}


def test_bn_recalibration_is_kept_only_where_it_brings_the_student_closer_to_the_teacher():
    from slimkit.compress.distill import _kl_to, guarded_recalibrate

    from slimkit.compress.bnrecal import recalibrate

    teacher = tiny_model()
    X = torch.cat([b[0] for b in tiny_data(n_batches=2)])
    recalibrate(teacher, X, passes=1, augment=False)  # a teacher whose statistics are those of its data
    broken = copy.deepcopy(teacher)
    broken.bn.running_var.mul_(50.0)  # statistics that no longer fit the activations, as after pruning
    before = _kl_to(broken, teacher, X)
    assert guarded_recalibrate(broken, teacher, X, False, 0) == "kept"
    assert _kl_to(broken, teacher, X) < before
    assert not torch.allclose(broken.bn.running_var, teacher.bn.running_var * 50.0)
    same = copy.deepcopy(teacher)  # already matched: re-estimating from 32 images can only move it away
    assert guarded_recalibrate(same, teacher, X, False, 0) == "rolled back"
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), teacher.state_dict().values()))


def test_distill_through_compress_uses_original_as_teacher():
    teacher = tiny_model()
    student = hand_pruned(teacher)
    # compress() is handed the student; its own "teacher" is then the student, so channel maps are identity
    res = compress(student, torch.randn(1, 3, 8, 8), "distill(method=layerwise,steps=2,views=1)", data=tiny_data(),
                   progress=False, latency_batches=())
    assert res.model.conv1.weight.shape == (5, 8, 3, 3)
    # ... and it is distilled towards that original (the student), not the unpruned net it came from
    x = torch.cat([b[0] for b in tiny_data(n_batches=4)])
    assert logit_mse(res.model, student, x) < logit_mse(res.model, teacher, x)
    # handed the unpruned net, compress() prunes it and distill pulls the pruned model back towards it
    data = tiny_data(n_batches=4)
    pruned = compress(teacher, x[:1], "prune(macs=0.6)", data=data, progress=False, latency_batches=()).model
    recovered = compress(teacher, x[:1], "prune(macs=0.6),distill(method=layerwise,steps=2,views=1)", data=data, progress=False,
                         latency_batches=()).model
    assert logit_mse(recovered, teacher, x) < 0.5 * logit_mse(pruned, teacher, x)


def test_errors():
    with pytest.raises(SlimkitError, match="needs few-shot data"):
        distill(tiny_model(), torch.randn(1, 3, 8, 8), DistillConfig(), CompressContext())
    with pytest.raises(ValueError, match=r"mu must be in \[0, 1\]"):
        DistillConfig(mu=2.0)
    with pytest.raises(ValueError, match="ridge"):
        DistillConfig(ridge=-1.0)


def test_lsq_solver_is_the_exact_minimiser():
    """Layer-wise: each refit layer is the least-squares solution of (student input -> teacher output)."""
    teacher = tiny_model()
    student = hand_pruned(teacher)
    data = tiny_data(n_batches=4)
    x = torch.cat([b[0] for b in data])
    ctx = CompressContext(teacher=teacher, data=data, progress=False)
    cfg = dict(method="layerwise", select="keep", k=None, views=1, steps=0)
    lsq = distill(student, x[:1], DistillConfig(bnrecal=False, solver="lsq", ridge=0.0, **cfg), ctx)
    adam = distill(student, x[:1], DistillConfig(bnrecal=False, solver="adam", iters=30, lr=1e-2, **cfg), ctx)
    xs, _ = _io(lsq, "conv2", x)
    _, yt = _io(teacher, "conv2", x)
    from slimkit.compress.distill import _flat_weight, _responses, _rows
    a, b = _rows(lsq.conv2, xs).double(), _responses(yt, lsq.conv2).double()
    ref = torch.linalg.lstsq(a, b).solution
    torch.testing.assert_close(_flat_weight(lsq.conv2), ref, rtol=1e-4, atol=1e-5)

    def conv2_error(m):
        return float(((_io(m, "conv2", x)[1] - yt) ** 2).mean())

    assert 0 < conv2_error(lsq) <= conv2_error(adam)  # the closed form cannot be beaten
    assert float(((_io(lsq, "stem", x)[1] - _io(teacher, "stem", x)[1]) ** 2).mean()) < 1e-10  # reachable: exact


def test_recon_reselects_chain_channels_and_refits_the_reader_exactly():
    from slimkit.compress.distill import _flat_weight, _responses, _rows
    from slimkit.compress.surgery import prune_record

    teacher = tiny_model()
    student = with_record(hand_pruned(teacher), teacher)
    data = tiny_data(n_batches=4)
    x = torch.cat([b[0] for b in data])
    ctx = CompressContext(teacher=teacher, data=data, progress=False)
    out = distill(student, x[:1], DistillConfig(method="layerwise", bnrecal=False, select="recon", k=None, views=1, steps=0, ridge=0.0), ctx)
    chain = prune_record(out).chains[0]
    assert len(chain.kept) == 5 and out.conv1.weight.shape[0] == out.conv2.weight.shape[1] == 5
    assert prune_record(out).kept["conv2"][1].tolist() == chain.kept.tolist()
    assert "re-selected" in out.distill_report["conv1"]
    assert prune_record(student).chains[0].kept.tolist() == KEEP.tolist()  # the input model's record is untouched
    # conv2 is the exact least-squares fit of the teacher's conv2 output from the student's kept channels
    xs, _ = _io(out, "conv2", x)
    _, yt = _io(teacher, "conv2", x)
    ref = torch.linalg.lstsq(_rows(out.conv2, xs).double(), _responses(yt, out.conv2).double()).solution
    torch.testing.assert_close(_flat_weight(out.conv2), ref, rtol=1e-3, atol=1e-4)
    keep = distill(with_record(hand_pruned(teacher), teacher), x[:1],
                   DistillConfig(method="layerwise", bnrecal=False, select="keep", k=None, views=1, steps=0, ridge=0.0), ctx)
    assert float(((_io(out, "conv2", x)[1] - yt) ** 2).mean()) <= float(((_io(keep, "conv2", x)[1] - yt) ** 2).mean())


class _ChannelLast(torch.nn.Module):
    """Linear layers on (B, H, W, C) maps, as a ConvNeXt/MLP-Mixer-style block computes them."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.fc1, self.fc2, self.head = torch.nn.Linear(6, 8), torch.nn.Linear(8, 6), torch.nn.Linear(6, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.head(self.fc2(torch.relu(self.fc1(x))).mean((1, 2)))


def _channel_last_pair():
    teacher = _ChannelLast().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.fc1 = torch.nn.Linear(6, len(KEEP))
        student.fc1.weight.copy_(teacher.fc1.weight[KEEP]); student.fc1.bias.copy_(teacher.fc1.bias[KEEP])
        student.fc2 = torch.nn.Linear(len(KEEP), 6)
        student.fc2.weight.copy_(teacher.fc2.weight[:, KEEP]); student.fc2.bias.copy_(teacher.fc2.bias)
    x = torch.randn(40, 5, 5, 6, generator=torch.Generator().manual_seed(4))
    y = torch.arange(40) % 4
    return teacher, student.eval(), x, y


@pytest.mark.parametrize("method", ["layerwise", "cross"])
def test_layer_solves_take_channels_from_the_last_dim_of_a_linear_on_channel_last_maps(method):
    """The least-squares pieces index a Linear's channels on its input's last dim (a 4-D (B, H, W, C) input is
    not a conv's (B, C, H, W)): layer-wise, fc2 is the exact least-squares fit of the teacher's fc2 output;
    cross distillation at least brings the logits closer."""
    from slimkit.compress.distill import _flat_weight, _responses, _rows

    teacher, student, x, y = _channel_last_pair()
    ctx = CompressContext(teacher=teacher, data=(x, y), progress=False)
    out = distill(student, x[:1], DistillConfig(method=method, bnrecal=False, select="keep", k=None, views=1,
                                                 steps=0, ridge=0.0, flip="off"), ctx)
    assert out.fc1.weight.shape == (len(KEEP), 6) and out.fc2.weight.shape == (6, len(KEEP))
    assert logit_mse(out, teacher, x) < logit_mse(student, teacher, x)
    if method == "layerwise":
        xs, _ = _io(out, "fc2", x)
        _, yt = _io(teacher, "fc2", x)
        ref = torch.linalg.lstsq(_rows(out.fc2, xs).double(), _responses(yt, out.fc2).double()).solution
        torch.testing.assert_close(_flat_weight(out.fc2), ref, rtol=1e-4, atol=1e-5)


def test_bn_train_re_estimates_the_statistics_after_function_matching():
    """distill(bn=train) runs the guarded recalibration a second time, after function matching, and reports it."""
    teacher = tiny_model().eval()
    data = tiny_data(n_batches=2)
    ctx = CompressContext(data=data, teacher=teacher)
    out = distill(hand_pruned(teacher), None, DistillConfig(method="finetune", steps=5, bn="train"), ctx)
    assert out.distill_report["bnrecal_after"] in ("kept", "rolled back")
    out = distill(hand_pruned(teacher), None, DistillConfig(method="finetune", steps=5), ctx)
    assert "bnrecal_after" not in out.distill_report


def test_tta_is_not_used_where_flips_are_off():
    """distill(tta=flip) with flip=off warns once and runs the plain target: the same weights as tta=none."""
    teacher = tiny_model().eval()
    x, y = next(iter(tiny_data(n_batches=1)))
    runs = {}
    for tta in ("none", "flip"):
        cfg = DistillConfig(method="finetune", bnrecal=False, k=None, steps=3, batch_size=4, flip="off", tta=tta,
                            features=0)
        ctx = CompressContext(teacher=teacher, data=(x, y), progress=False)
        if tta == "flip":
            with pytest.warns(UserWarning, match="tta=flip not used: flips are off"):
                runs[tta] = distill(hand_pruned(teacher), x[:1], cfg, ctx)
        else:
            runs[tta] = distill(hand_pruned(teacher), x[:1], cfg, ctx)
    assert all(torch.equal(a, b) for a, b in zip(runs["none"].state_dict().values(),
                                                   runs["flip"].state_dict().values()))
