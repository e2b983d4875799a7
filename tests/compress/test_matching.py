"""Function matching's divergence guard: a run that blows up rolls back to finite weights and says so; a run
that does not diverge is exactly the plain loop."""
import copy

import pytest
import torch

from _tiny_resnet import tiny_data, tiny_model
from slimkit.compress.matching import MatchSettings, function_matching


def _x():
    return torch.cat([b[0] for b in tiny_data(n_batches=2)])


def _teacher_and_disagreeing_student(make=tiny_model):
    """A model from ``make`` and a seeded perturbation of it: a student identical to its teacher has a zero KD
    gradient."""
    teacher, student = make().eval(), make().eval()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return teacher, student


def test_divergence_rolls_back_to_finite_weights_and_warns():
    teacher, student = tiny_model().eval(), tiny_model().eval()
    with pytest.warns(UserWarning, match=r"diverged \d+ time\(s\); rolled back"):
        function_matching(student, teacher, _x(), MatchSettings(steps=40, lr=1e6, batch_size=8),
                          torch.Generator().manual_seed(0))
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_a_stable_run_is_untouched_by_the_guard():
    """Same seed, same steps: the guarded loop gives bit-identical weights to a second run (no rollback fired)
    and issues no warning."""
    teacher, student = tiny_model().eval(), tiny_model().eval()
    twin = copy.deepcopy(student)
    s = MatchSettings(steps=20, lr=1e-2, batch_size=8)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        function_matching(student, teacher, _x(), s, torch.Generator().manual_seed(0))
        function_matching(twin, teacher, _x(), s, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), twin.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), tiny_model().state_dict().values()))


class _Block(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(w, w, 3, padding=1), torch.nn.Conv2d(w, w, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))) + x)


def _two_blocks():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), _Block(4), _Block(4),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()


def test_block_features_follow_the_teacher_names_and_skip_dropped_blocks():
    """feature_at=blocks pairs the teacher's blocks with the student's modules of the same name, so a student
    whose convs were replaced by other layer types still gets both terms; a block dropped to an identity gets
    none."""
    from slimkit.compress.matching import _feature_hooks

    teacher = _two_blocks()
    student = copy.deepcopy(teacher)
    student[1].a = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 4, 3, padding=1))  # "replaced"
    student[1].b = torch.nn.Identity()
    student[2] = torch.nn.Identity()  # dropped
    grab_s, grab_t = _feature_hooks(student, teacher, MatchSettings(features=1.0, feature_at="blocks"))
    try:
        x = torch.randn(2, 3, 6, 6)
        student(x), teacher(x)
        assert sorted(grab_s.values) == sorted(grab_t.values) == ["1"]
    finally:
        grab_s.remove()
        grab_t.remove()


def test_block_feature_term_pulls_the_student_towards_the_teacher_blocks():
    """With only the feature term mattering (temperature-scaled KL is the same for both runs), a run with
    features=3 ends with block outputs closer to the teacher's than a run without."""
    teacher = _two_blocks()
    x = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(2))

    def block_gap(student):
        with torch.no_grad():
            return float((student[1](student[0](x)) - teacher[1](teacher[0](x))).pow(2).mean())

    gaps = []
    for w in (0.0, 3.0):
        torch.manual_seed(5)
        student = copy.deepcopy(teacher)
        with torch.no_grad():
            for p in student[1].parameters():
                p.add_(0.3 * torch.randn_like(p))
        function_matching(student, teacher, x, MatchSettings(steps=60, lr=0.02, batch_size=16, features=w,
                                                             feature_at="blocks", mix="none"),
                          torch.Generator().manual_seed(0))
        gaps.append(block_gap(student))
    assert gaps[1] < 0.8 * gaps[0]


def test_ema_returns_the_moving_average_of_the_weights_each_step_left():
    """ema=d: the student ends with a_T, where a_1 = w_1 and a_t = d a_{t-1} + (1 - d) w_t over the weights w_t
    after each optimizer step (recorded by a step hook), to float32 rounding."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    teacher, student = _teacher_and_disagreeing_student()
    snaps = []
    handle = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: snaps.append([p.detach().clone() for p in student.parameters()]))
    try:
        function_matching(student, teacher, _x(), MatchSettings(steps=12, lr=0.05, batch_size=8, ema=0.8),
                          torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert len(snaps) == 12
    avg = snaps[0]
    for w in snaps[1:]:
        avg = [0.8 * a + 0.2 * b for a, b in zip(avg, w)]
    got = list(student.parameters())
    assert all(torch.allclose(g, a, atol=1e-6, rtol=0) for g, a in zip(got, avg))
    gap = max(float((a - w).abs().max()) for a, w in zip(avg, snaps[-1]))
    assert gap > 1e-4  # not the last weights
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
        function_matching(student, teacher, _x(), MatchSettings(steps=2, ema=1.0), torch.Generator())


def test_anchor_adds_the_l2sp_gradient_towards_the_start_weights():
    """anchor=a: each step's gradient is the loss's gradient (read by a tensor hook) plus a (w - w_start), to
    float32 rounding; the student ends nearer its start than without the anchor."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    teacher, student = _teacher_and_disagreeing_student()
    start, plain = [p.detach().clone() for p in student.parameters()], copy.deepcopy(student)
    loss_grads, gaps = {}, []
    hooks = [p.register_hook(lambda g, i=i: loss_grads.__setitem__(i, g.clone()))
             for i, p in enumerate(student.parameters())]

    def check(opt, args, kwargs):
        gaps.append(max(float((p.grad - loss_grads[i] - 0.5 * (p.detach() - start[i])).abs().max())
                        for i, p in enumerate(student.parameters())))

    handle = register_optimizer_step_pre_hook(check)
    try:
        function_matching(student, teacher, _x(), MatchSettings(steps=10, lr=0.05, batch_size=8, anchor=0.5),
                          torch.Generator().manual_seed(0))
    finally:
        handle.remove()
        for h in hooks:
            h.remove()
    assert len(gaps) == 10 and max(gaps) < 1e-6
    function_matching(plain, teacher, _x(), MatchSettings(steps=10, lr=0.05, batch_size=8),
                      torch.Generator().manual_seed(0))
    drift = lambda m: sum(float((p.detach() - s).pow(2).sum()) for p, s in zip(m.parameters(), start))  # noqa: E731
    assert drift(student) < drift(plain)
    with pytest.raises(ValueError, match="anchor and adv must be >= 0"):
        function_matching(student, teacher, _x(), MatchSettings(steps=2, anchor=-1.0), torch.Generator())


def test_adversarial_views_raise_the_kd_loss_and_leave_the_weights_alone():
    """adversarial_views: each pixel moves by exactly step x std; the student's KD loss to the teacher rises;
    no parameter gets a gradient. adv>0 runs function matching and ends with finite, moved weights."""
    from slimkit.compress.matching import adversarial_views, kd_loss

    teacher, student = _teacher_and_disagreeing_student()
    x = _x()[:8]
    with torch.no_grad():
        t_out = teacher(x)
    xa = adversarial_views(student, t_out, x, 0.05)
    moved = (xa - x).abs()
    assert torch.allclose(moved[moved > 0], torch.tensor(0.05 * float(x.std())), rtol=1e-4)
    assert float((moved > 0).float().mean()) > 0.9
    assert all(p.grad is None for p in student.parameters())
    with torch.no_grad():
        assert kd_loss(student(xa), t_out, 1.0) > kd_loss(student(x), t_out, 1.0)
    before = copy.deepcopy(student)
    function_matching(student, teacher, _x(), MatchSettings(steps=5, lr=0.05, batch_size=8, adv=0.05, features=1,
                                                            feature_at="blocks"), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), before.parameters()))


def test_mirror_mean_target_is_invariant_to_mirroring_and_its_block_maps_equivariant():
    """tta: the target logits are the mean of the teacher on x and on x mirrored (1e-6), so they are the same
    for x and its mirror image; block maps of the mirrored pass are mirrored back, so the target map of the
    mirrored input is the mirrored target map (exact up to float rounding); features=False keeps the view's
    own maps. In function matching tta moves the student and finishes finite; a wrong value or non-image
    inputs are refused."""
    from slimkit.compress.matching import _feature_hooks, _mirror_mean

    teacher, student = _teacher_and_disagreeing_student(_two_blocks)
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    s = MatchSettings(features=1.0, feature_at="blocks")
    targets = {}
    for name, xi in (("x", x), ("mirror", x.flip(3))):
        grabs = _feature_hooks(student, teacher, s)
        grab = grabs[1]  # the teacher's
        try:
            with torch.no_grad():
                out = teacher(xi)
                plain = dict(grab.values)
                mean = _mirror_mean(teacher, xi, out, grab)
                targets[name] = (mean, dict(grab.values), plain)
                grab.values.update(plain)
                _mirror_mean(teacher, xi, out, grab, features=False)
                assert all(torch.equal(grab.values[n], plain[n]) for n in plain)
                torch.testing.assert_close(mean, 0.5 * (teacher(xi) + teacher(xi.flip(3))), rtol=0, atol=1e-6)
        finally:
            for g in grabs:
                g.remove()
    (m0, f0, p0), (m1, f1, _) = targets["x"], targets["mirror"]
    assert sorted(f0) == ["1", "2"] and all(f0[n].dim() == 4 for n in f0)
    torch.testing.assert_close(m0, m1, rtol=0, atol=1e-5)
    for n in f0:
        torch.testing.assert_close(f1[n], f0[n].flip(3), rtol=0, atol=1e-5)
        assert not torch.allclose(f0[n], p0[n], atol=1e-3)  # the tiny net is not mirror-equivariant: the mean moved
    before = copy.deepcopy(student)
    function_matching(student, teacher, x, MatchSettings(steps=5, lr=0.05, batch_size=8, tta="flip", features=1,
                                                         feature_at="blocks"), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), before.parameters()))
    with pytest.raises(ValueError, match="tta must be"):
        function_matching(student, teacher, x, MatchSettings(steps=1, tta="rotate"), torch.Generator())
    with pytest.raises(ValueError, match=r"mirrors images \[N, C, H, W\]"):
        function_matching(torch.nn.Linear(4, 2), torch.nn.Linear(4, 2), torch.randn(8, 4),
                          MatchSettings(steps=1, tta="flip"), torch.Generator())


def test_mse_loss_is_the_high_temperature_limit_of_the_scaled_kl():
    """loss=mse is the logits' mean squared error; T^2 KL at T=1000 equals half of it (within 0.5%) when the
    logit differences have zero mean per sample (float64: in float32 the KL's rounding dominates); an unknown
    loss is refused."""
    import torch.nn.functional as F

    from slimkit.compress.matching import kd_loss

    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 10, generator=g, dtype=torch.float64)
    d = torch.randn(6, 10, generator=g, dtype=torch.float64)
    s = t + d - d.mean(1, keepdim=True)
    assert torch.equal(kd_loss(s, t, 1.0, "mse"), F.mse_loss(s, t))
    assert float(kd_loss(s, t, 1000.0, "kl")) == pytest.approx(0.5 * float(F.mse_loss(s, t)), rel=5e-3)
    with pytest.raises(ValueError, match="loss must be 'kl' or 'mse'"):
        kd_loss(s, t, 1.0, "l1")


def test_adam_with_mse_loss_moves_the_student_towards_the_teacher():
    """optimizer=adam, loss=mse: 60 steps lower the logits' MSE to the teacher on the images by at least half;
    an unknown optimizer is refused."""
    import torch.nn.functional as F

    teacher = tiny_model().eval()
    torch.manual_seed(1)
    student = tiny_model().eval()
    for p in student.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    x = _x()
    with torch.no_grad():
        before = float(F.mse_loss(student(x), teacher(x)))
    function_matching(student, teacher, x, MatchSettings(steps=60, lr=3e-3, batch_size=8, loss="mse", optimizer="adam",
                                                         crop=False, flip=False, mix="none"),
                      torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = float(F.mse_loss(student(x), teacher(x)))
    assert after < 0.5 * before
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adam'"):
        function_matching(student, teacher, x, MatchSettings(steps=1, optimizer="lion"), torch.Generator())


class _Overflowing(torch.nn.Module):
    """exp of a linear map: a large enough (still finite) weight makes the outputs overflow to inf."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 4)
        torch.nn.init.zeros_(self.fc.weight)

    def forward(self, x):
        return torch.exp(self.fc(x.flatten(1)))


def test_finite_weights_whose_outputs_overflow_are_not_returned():
    """A huge-lr update leaves the weights finite but the outputs infinite; the in-loop guard sees that only in the
    next step's loss, so the last update (one-cycle's last lr is still 4e4 here) would slip through: the final
    probe rolls back to the weights before function matching."""
    torch.manual_seed(0)
    teacher, student = tiny_model().eval(), _Overflowing().eval()
    start = copy.deepcopy(student.state_dict())
    with pytest.warns(UserWarning, match=r"diverged \d+ time\(s\).*the final ones overflow"):
        function_matching(student, teacher, _x(), MatchSettings(steps=3, lr=1e10, batch_size=8, features=0),
                          torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(student(_x())).all()
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), start.values()))


def test_bn_frozen_keeps_the_running_statistics_and_train_updates_them():
    """bn="frozen" (the default) leaves every BatchNorm buffer bit-identical; bn="train" normalises by batch
    statistics, so the running ones move; anything else is refused."""
    teacher = tiny_model().eval()
    frozen, trained = tiny_model().eval(), tiny_model().eval()
    start = {k: v.clone() for k, v in frozen.state_dict().items() if "running" in k}
    for model, bn in ((frozen, "frozen"), (trained, "train")):
        function_matching(model, teacher, _x(), MatchSettings(steps=5, batch_size=8, bn=bn),
                          torch.Generator().manual_seed(0))
    assert start and all(torch.equal(frozen.state_dict()[k], v) for k, v in start.items())
    assert all(not torch.equal(trained.state_dict()[k], v) for k, v in start.items())
    assert not trained.training
    with pytest.raises(ValueError, match="bn must be 'frozen' or 'train'"):
        function_matching(frozen, teacher, _x(), MatchSettings(steps=1, bn="eval"), torch.Generator())
