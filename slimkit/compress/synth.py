"""synth: synthetic images from the teacher's BatchNorm statistics (ZeroQ / DeepInversion), capped in compute.

Every BatchNorm layer stores the mean and variance its input had on the training set. Starting from noise,
``n`` images are optimised (Adam on the pixels, ``iters`` steps per batch) so that the batch statistics at
every BatchNorm input match the stored ones (``sum_l ||mu_l - mu_l*||_2 + ||sigma_l^2 - sigma_l^2*||_2``,
DeepInversion's R_feature), plus a cross-entropy to a random target class per image (weight ``ce``), a total-
variation and an L2 image prior, with random shifts and flips between steps (DeepInversion's jitter).

The pass returns the model unchanged and leaves the images in ``context.extras["synthetic"]`` as ``(X, Y)``
(Y: the target classes). Later recovery passes (``bnrecal``, ``distill``) use them: mixed with the real few-shot
images when ``data`` is given (PGDI: few real images + inversions beat either alone), alone when ``data=None``
(the data-free path). Cost: ``n / batch_size * iters`` forward+backward passes of the teacher.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slimkit.compress.base import PassConfig, register_pass
from slimkit.compress.bnrecal import batchnorms
from slimkit.errors import SlimkitError


@dataclass
class SynthConfig(PassConfig):
    """n: images to make; iters: Adam steps per batch; lr: pixel learning rate; ce: weight of the cross-entropy
    to a random class; tv/l2: image-prior weights; jitter: max random shift in pixels between steps; flip:
    random horizontal flips between steps (off for digits/text)."""

    name = "synth"
    lossless = True  # the model is returned unchanged
    n: int = 256
    iters: int = 200
    batch_size: int = 64
    lr: float = 0.1
    ce: float = 0.1
    tv: float = 1e-4
    l2: float = 1e-5
    jitter: int = 2
    flip: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.n < 1 or self.iters < 1 or self.batch_size < 2:
            raise ValueError("synth: n >= 1, iters >= 1 and batch_size >= 2 are required")


class _BNStats:
    """Forward hooks on every BatchNorm: the R_feature loss of the current batch."""

    def __init__(self, model):
        self.bns = batchnorms(model)
        self.losses = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.bns]

    def _hook(self, m, args, out):
        x = args[0]
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        self.losses.append(torch.linalg.vector_norm(mean - m.running_mean) +
                           torch.linalg.vector_norm(var - m.running_var))

    def pop(self):
        out = sum(self.losses) if self.losses else None
        self.losses = []
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def bn_statistics_gap(model, x):
    """Per BatchNorm: (max |batch mean - running mean|, max |batch var - running var| / running var) on ``x``."""
    gaps, handles = [], []

    def hook(m, args, out):
        a = args[0]
        dims = [d for d in range(a.dim()) if d != 1]
        gaps.append((float((a.mean(dims) - m.running_mean).abs().max()),
                     float(((a.var(dims, unbiased=False) - m.running_var).abs() / m.running_var).max())))

    for m in batchnorms(model):
        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return gaps


def _tv(x):
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean() + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()


def synthesize(teacher, shape, config, progress=False):
    """``config.n`` images of per-image ``shape`` (C, H, W) fitted to ``teacher``'s BatchNorm statistics ->
    (X, Y target classes)."""
    from tqdm import tqdm

    teacher = copy.deepcopy(teacher).eval()
    teacher.requires_grad_(False)
    stats = _BNStats(teacher)
    if not stats.bns:
        stats.remove()
        raise SlimkitError("synth needs a teacher with BatchNorm layers (their running statistics are the target)")
    gen = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        n_classes = teacher(torch.zeros(1, *shape)).shape[-1]
        stats.pop()
    xs, ys = [], []
    batches = [min(config.batch_size, config.n - i) for i in range(0, config.n, config.batch_size)]
    bar = tqdm(total=len(batches) * config.iters, desc="synth", disable=not progress, leave=False)
    try:
        for b in batches:
            x = torch.randn(b, *shape, generator=gen).requires_grad_(True)
            y = torch.randint(0, n_classes, (b,), generator=gen)
            opt = torch.optim.Adam([x], lr=config.lr, betas=(0.5, 0.9))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.iters)
            for _ in range(config.iters):
                v = x
                if config.jitter and x.dim() == 4:
                    dy, dx = (int(torch.randint(-config.jitter, config.jitter + 1, (1,), generator=gen)) for _ in range(2))
                    v = torch.roll(v, shifts=(dy, dx), dims=(2, 3))
                if config.flip and x.dim() == 4 and torch.rand((), generator=gen) < 0.5:
                    v = v.flip(3)
                out = teacher(v)
                loss = stats.pop() + config.ce * F.cross_entropy(out, y) + config.l2 * v.pow(2).mean()
                if x.dim() == 4:
                    loss = loss + config.tv * _tv(v)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
            xs.append(x.detach())
            ys.append(y)
    finally:
        bar.close()
        stats.remove()
    return torch.cat(xs), torch.cat(ys)


@register_pass(SynthConfig)
def synth(model, example_inputs, config, context=None):
    """Make synthetic images from ``model``'s BatchNorm statistics for later recovery passes; the model is
    returned unchanged (a copy)."""
    from slimkit.model_io import Example

    if context is None:
        raise SlimkitError("synth needs a compress context to hand its images to later passes")
    tensors = Example.of(example_inputs).tensors()
    if len(tensors) != 1:
        raise SlimkitError("synth makes one input tensor per sample; this model takes "
                           f"{len(tensors)} tensors")
    teacher = context.extras.get("reference") or context.teacher or model
    context.extras["synthetic"] = synthesize(teacher, tuple(tensors[0].shape[1:]), config, context.progress)
    return copy.deepcopy(model)
