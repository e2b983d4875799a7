"""bnrecal: re-estimate BatchNorm running statistics on augmented copies of the few-shot images.

After pruning, every BatchNorm still holds the statistics of the unpruned network, though its input has
changed (adaptive BN, EagleEye, Li et al. ECCV 2020). This pass resets them and averages the batch
statistics of ``passes`` rounds over the images, each in new random views (crops, and flips when the teacher
says they keep the class, see ``views.flip_safe``). Only running statistics change: weights, biases and the
forward code stay. Seconds of work; with ``data=None`` the synthetic images of an earlier ``synth`` pass are
used, and without either the pass refuses.

Example: ``compress(model, x, "prune(macs=0.5,coupled=false),bnrecal", data=(X, Y))``.
"""
import contextlib
import copy
from dataclasses import dataclass
from typing import Literal

import torch

from slimkit.compress.base import PassConfig, register_pass
from slimkit.compress.views import flip_safe, random_views
from slimkit.errors import SlimkitError

_BN = torch.nn.modules.batchnorm._BatchNorm


@dataclass
class BNRecalConfig(PassConfig):
    """passes: rounds over the images, each in new random views; batch_size: images per forward (its batch
    statistics are averaged with equal weight); flip: "auto" asks the teacher whether mirrored images keep
    their class."""

    name = "bnrecal"
    lossless = False
    recovery = True
    passes: int = 8
    batch_size: int = 64
    augment: bool = True
    flip: Literal["auto", "on", "off"] = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.passes < 1 or self.batch_size < 2:
            raise ValueError(f"bnrecal: passes >= 1 and batch_size >= 2, got {self.passes}, {self.batch_size}")


def batchnorms(model):
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@contextlib.contextmanager
def collecting_statistics(model):
    """Inside: every BatchNorm of ``model`` starts from reset statistics and keeps the cumulative average of the
    batch statistics of each forward (the rest of the model in eval mode); after: modes and momenta restored.
    Yields the number of BatchNorm layers reset."""
    bns = batchnorms(model)
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
        m.train()
    try:
        with torch.no_grad():
            yield len(bns)
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
            m.train(tr)
        model.train(was_training)


@torch.no_grad()
def recalibrate(model, X, passes=8, batch_size=64, augment=True, flip=True, seed=0):
    """In place: every BatchNorm's running mean/var = the cumulative average over the batches of ``passes``
    rounds of (augmented) ``X``. Returns the number of BatchNorm layers reset."""
    if not batchnorms(model):
        return 0
    gen = torch.Generator().manual_seed(seed)
    with collecting_statistics(model) as n:
        for _ in range(passes):
            order = torch.randperm(len(X), generator=gen)
            for idx in order.split(batch_size):
                if len(idx) < 2:
                    continue
                xb = X[idx]
                model(random_views(xb, gen, True, flip) if augment else xb)
    return n


def recovery_images(context, what):
    """The images a recovery pass may use: the few-shot data, else synthetic images of an earlier synth pass."""
    from slimkit.data.batches import as_tensors

    if context is not None and context.data is not None:
        return as_tensors(context.data)
    synthetic = context.extras.get("synthetic") if context is not None else None
    if synthetic is not None:
        return synthetic
    raise SlimkitError(f"{what} needs images: compress(..., data=(X, Y)), or put a synth pass before it for "
                       "data-free recovery")


@register_pass(BNRecalConfig)
def bnrecal(model, example_inputs, config, context=None):
    """A copy of ``model`` with BatchNorm running statistics re-estimated on the few-shot images."""
    X, _ = recovery_images(context, "bnrecal")
    teacher = (context.extras.get("reference") or context.teacher) if context is not None else None
    flip = {"on": True, "off": False}.get(config.flip)
    if flip is None:
        flip = flip_safe(teacher.eval(), X) if teacher is not None else False
    out = copy.deepcopy(model)
    recalibrate(out, X, config.passes, config.batch_size, config.augment, flip, config.seed)
    return out.eval()
