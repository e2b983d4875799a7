"""Function matching: fine-tune a student to the teacher's outputs on heavily augmented few-shot images.

"Patient and consistent" distillation (Beyer et al., CVPR 2022): every step draws new views of the few images
(random crops, flips where the data allows, mixup/cutmix between them) and the teacher labels exactly the view
the student sees, so 100 images give many distinct training signals; the loss is the KL divergence to the
teacher's softened outputs, optionally plus the MSE to its penultimate features (the classifier's input, as
MiR does). No labels are used. SGD with Nesterov momentum and a one-cycle schedule; BatchNorm statistics
stay frozen (recalibrate them before, see ``bnrecal``). Used by ``distill`` and by ``pq``'s codeword fine-tune.
"""
import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slimkit.compress.views import views


@dataclass
class MatchSettings:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 0.01  # peak of the one-cycle schedule
    temperature: float = 1.0
    loss: str = "kl"  # "kl": KL to the teacher's softened outputs; "mse": mean squared error between the logits
    features: float = 0.0  # weight of the feature MSE (each term relative to the teacher's feature energy)
    feature_at: str = "penultimate"  # "penultimate": the classifier's input; "blocks": every residual block's output
    crop: object = True  # True/"shift", "resized" or False/"none" (see views.random_views)
    flip: bool = True
    mix: str = "both"
    alpha: float = 1.0
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    ema: float = 0.0  # decay of an exponential moving average of the weights, returned instead of the last ones (0: off)
    bn: str = "frozen"  # "frozen": BatchNorm uses its running statistics; "train": batch statistics, running ones updated
    anchor: float = 0.0  # L2-SP: weight of 0.5 * ||w - w_start||^2 over the trained parameters (0: off)
    adv: float = 0.0  # half of each batch moved one signed-gradient step up the KD loss, step = adv * input std (0: off)
    # "flip": the target (logits and matched features) is the mean of the teacher on each view and on its mirror
    # image; "flip_logits": only the logits are averaged, the features stay the view's
    tta: str = "none"


def last_linear(model):
    """The last nn.Linear registered in ``model`` (the classifier of a CNN), or None."""
    found = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            found = m
    return found


def block_names(model):
    """Submodules holding >= 2 conv/linear layers that are not plain containers: a network's blocks."""
    layers = (torch.nn.Conv2d, torch.nn.Linear)
    return [n for n, m in model.named_modules() if n and not isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList))
            and sum(isinstance(x, layers) for x in m.modules()) >= 2]


class _Grab:
    """Forward hooks keeping, per name, the input (``what="input"``) or output of modules."""

    def __init__(self, modules, what="output"):
        self.values, self.what = {}, what
        self.handles = [m.register_forward_hook(lambda mod, a, o, n=n: self.values.__setitem__(
            n, a[0] if self.what == "input" else o)) for n, m in modules.items()]

    def remove(self):
        for h in self.handles:
            h.remove()


def _feature_hooks(student, teacher, s):
    if s.features <= 0:
        return _Grab({}), _Grab({})
    if s.feature_at == "blocks":
        # the teacher's blocks, found by name in the student: a student whose layers were replaced (pq, lowrank)
        # keeps its block names; a block dropped to an identity has nothing to match
        mods = dict(student.named_modules())
        names = [n for n in block_names(teacher) if n in mods and not isinstance(mods[n], torch.nn.Identity)]
        return (_Grab({n: student.get_submodule(n) for n in names}),
                _Grab({n: teacher.get_submodule(n) for n in names}))
    ls, lt = last_linear(student), last_linear(teacher)
    if ls is None or lt is None:
        return _Grab({}), _Grab({})
    return _Grab({"fc": ls}, "input"), _Grab({"fc": lt}, "input")


def _set_bn_eval(model):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def kd_loss(student_out, teacher_out, temperature, kind="kl"):
    """T^2 KL(teacher || student) at temperature T, or (``kind="mse"``) the mean squared error between the
    logits: as T grows the scaled KL tends to half of it for logit differences of zero mean (Hinton et al.
    2015), and Kim et al. (IJCAI 2021) found it the better distillation loss on CIFAR ResNets."""
    if kind == "mse":
        return F.mse_loss(student_out, teacher_out)
    if kind != "kl":
        raise ValueError(f"loss must be 'kl' or 'mse', got {kind!r}")
    t = temperature
    return t * t * F.kl_div(F.log_softmax(student_out / t, 1), F.log_softmax(teacher_out / t, 1),
                            reduction="batchmean", log_target=True)


def adversarial_views(student, teacher_out, x, step, temperature=1.0, kind="kl"):
    """``x`` moved one signed-gradient step of ``step`` x its std up the KD loss to ``teacher_out``: views where
    the student disagrees most with the teacher (Heo et al., AAAI 2019, distil on samples near the teacher's
    decision boundary); only the input receives a gradient."""
    xa = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(kd_loss(student(xa), teacher_out, temperature, kind), xa)
    return (x + step * x.std() * g.sign()).detach()


def usable_tta(tta, flip, desc):
    """``tta`` where the views are flipped; "none", with a warning, where mirrored images may change class."""
    if tta != "none" and not flip:
        warnings.warn(f"{desc}: tta={tta} not used: flips are off for these images (flip=off, or the teacher says "
                      "mirrored images change class)", UserWarning, stacklevel=3)
        return "none"
    return tta


def _mirror_mean(teacher, x, out, grab, features=True):
    """The teacher on ``x`` (``out``, its feature hooks in ``grab``) averaged with the teacher on ``x`` mirrored:
    a two-view test-time ensemble as the target. Spatial features of the mirrored pass are mirrored back so both
    views' maps line up; the mean of the penultimate features is then the input of the mean logits' classifier.
    ``features=False`` keeps the view's own features."""
    plain = dict(grab.values)
    out = 0.5 * (out + teacher(x.flip(3)))
    for n, v in plain.items():
        w = grab.values.get(n)
        if features and torch.is_tensor(v) and torch.is_tensor(w) and v.shape == w.shape:
            grab.values[n] = 0.5 * (v + (w.flip(3) if w.dim() == 4 else w))
        else:
            grab.values[n] = v
    return out


def _weight_average(model, decay):
    """torch's AveragedModel with an EMA of the parameters, or None when ``decay`` is 0."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {decay}")
    if decay == 0.0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


def function_matching(student, teacher, X, settings: MatchSettings, gen, params=None, progress=False, desc="distill"):
    """Fine-tune ``student`` in place towards ``teacher`` on views of ``X``; returns the last loss.
    ``params``: the parameters to train (default: all of the student's)."""
    from tqdm import tqdm

    s = settings
    if s.steps <= 0:
        return None
    params = [p for p in (params if params is not None else student.parameters()) if p.requires_grad]
    if s.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    elif s.optimizer != "sgd":
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {s.optimizer!r}")
    else:
        opt = torch.optim.SGD(params, lr=s.lr, momentum=0.9, nesterov=True, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.steps, pct_start=0.15)
    if s.bn not in ("frozen", "train"):
        raise ValueError(f"bn must be 'frozen' or 'train', got {s.bn!r}")
    if s.anchor < 0 or s.adv < 0:
        raise ValueError(f"anchor and adv must be >= 0 (0: off), got {s.anchor}, {s.adv}")
    if s.tta not in ("none", "flip", "flip_logits"):
        raise ValueError(f"tta must be 'none', 'flip' or 'flip_logits', got {s.tta!r}")
    if s.tta != "none" and X.dim() != 4:
        raise ValueError(f"tta={s.tta!r} mirrors images [N, C, H, W]; got inputs of shape {tuple(X.shape)}")
    # L2-SP (Li et al., ICML 2018): pull the weights towards where fine-tuning started, not towards zero, so the
    # few images' views move the student less far from the teacher-derived weights
    anchors = [p.detach().clone() for p in params] if s.anchor > 0 else None
    # before the feature hooks, so the average's copy carries none; only the parameters are averaged (with
    # bn="train" the caller re-estimates the statistics afterwards)
    average = _weight_average(student, s.ema)
    grab_s, grab_t = _feature_hooks(student, teacher, s)
    teacher.eval()
    student.train()
    if s.bn == "frozen":
        _set_bn_eval(student)
    loss = None
    # Divergence guard: with very few images (K=1) an update can blow up to NaN. Roll back to the last good
    # weights, drop the momentum and halve the learning rate for the rest of the run, rather than return (or
    # fail on) a broken student. Runs that never diverge are unchanged.
    start = copy.deepcopy(student.state_dict())
    good, good_every, lr_scale, rollbacks = start, 50, 1.0, 0
    try:
        for step in tqdm(range(s.steps), desc=f"{desc}: function matching", disable=not progress, leave=False):
            idx = torch.randint(0, len(X), (s.batch_size,), generator=gen)  # views differ, so a batch may exceed the image count
            x = views(X[idx], gen, s.crop, s.flip, s.mix, s.alpha)
            if s.adv > 0:  # the first half replaced; the teacher then labels the whole batch (its feature hooks too)
                h = max(1, len(x) // 2)
                with torch.no_grad():
                    t_half = teacher(x[:h])
                x = torch.cat([adversarial_views(student, t_half, x[:h], s.adv, s.temperature, s.loss), x[h:]])
            with torch.no_grad():
                t_out = teacher(x)
                if s.tta != "none":
                    t_out = _mirror_mean(teacher, x, t_out, grab_t, features=s.tta == "flip")
            out = student(x)
            loss = kd_loss(out, t_out, s.temperature, s.loss)
            terms = [F.mse_loss(fs, ft.detach()) / ft.detach().pow(2).mean().clamp_min(1e-12)
                     for n, fs in grab_s.values.items() if torch.is_tensor(fs)
                     for ft in [grab_t.values.get(n)] if torch.is_tensor(ft) and ft.shape == fs.shape]
            if terms:  # the mean over matched features, so the weight does not grow with depth
                loss = loss + s.features * sum(terms) / len(terms)
            broken = not torch.isfinite(loss)  # the last update broke the weights
            if not broken:
                if step and step % good_every == 0:  # weights that have just given a finite loss (step 0: start)
                    good = copy.deepcopy(student.state_dict())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if anchors is not None:  # the gradient of anchor/2 * ||w - w_start||^2, added in place
                    for p, a in zip(params, anchors):
                        if p.grad is not None:
                            p.grad.add_(p.detach() - a, alpha=s.anchor)
                opt.step()
                broken = not all(torch.isfinite(p).all() for p in params)
            sched.step()
            if broken:
                lr_scale *= 0.5
            if lr_scale != 1.0:
                for g in opt.param_groups:
                    g["lr"] *= lr_scale
            if broken:
                rollbacks += 1
                student.load_state_dict(good)
                opt.state.clear()
                if rollbacks > 8:
                    break
                continue
            if average is not None:
                average.update_parameters(student)
    finally:
        grab_s.remove()
        grab_t.remove()
        student.eval()
    if average is not None:
        with torch.no_grad():
            for p, q in zip(student.parameters(), average.module.parameters()):
                p.copy_(q)
    # A last update can leave the weights finite but so large that the outputs overflow (seen with a large
    # feature weight on a random-weight network): never hand that on; fall back to the last good weights, then to
    # the weights before function matching
    probe, kept = X[: s.batch_size], f"continued at {lr_scale:g}x the learning rate"
    for fallback, what in ((good, "kept the last good weights"), (start, "kept the weights before it")):
        with torch.no_grad():
            if torch.isfinite(student(probe)).all():
                break
        rollbacks, kept = rollbacks + 1, what + " (the final ones overflow)"
        student.load_state_dict(fallback)
    if rollbacks:
        warnings.warn(f"{desc}: function matching diverged {rollbacks} time(s); rolled back to the last good weights, "
                      f"{kept}", UserWarning, stacklevel=2)
    return float(loss.detach()) if torch.isfinite(loss) else None
