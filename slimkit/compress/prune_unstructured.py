"""Unstructured magnitude pruning with the accelerated iterative schedule (AIMP), for sparse kernels.

Schedules (``schedule=``):

- ``aimp`` (default): ``iterations`` rounds; each round globally zeroes the smallest-|w| share of the
  remaining conv/linear weights (per-round rate ``1 - (1 - sparsity) ** (1 / iterations)``), rewinds
  the learning-rate schedule and retrains. Every round except the last retrains for only
  ``ceil(short_fraction * epochs)`` epochs; the last one for the full ``epochs`` (Zullich et al.,
  ICPR 2020: non-final rounds can be cut by more than 50%).
- ``imp``: the baseline, full ``epochs`` every round.
- ``oneshot``: one magnitude cut to ``sparsity``, no retraining (also what happens without data).

**Training callback.** Retraining uses ``context.extras["train_fn"]`` when given:
``train_fn(model, epochs) -> None`` trains ``model`` in place (slimkit keeps the masks: pruned weights
have their gradients zeroed and are re-zeroed after every call). Otherwise, with ``context.data``
(few-shot (x, y) batches), a built-in loop runs SGD (momentum 0.9, cosine learning rate from ``lr``,
cross-entropy) for ``epochs`` passes; each round restarts the schedule (learning-rate rewinding).

The result stays dense (zeros stored): MACs do not drop unless a sparse kernel runs it; the exact
sparsity is in ``context.extras["sparsify"]``.
"""
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from slimkit.compress.base import CompressContext, PassConfig, register_pass

SCHEDULES = ("aimp", "imp", "oneshot")


@dataclass
class SparsifyConfig(PassConfig):
    """``sparsity``: final zero fraction of conv/linear weights; ``iterations``: pruning rounds;
    ``epochs``: full retraining length; ``short_fraction``: AIMP's shortened non-final rounds."""

    name = "sparsify"
    lossless = False
    sparsity: float = 0.8
    schedule: str = "aimp"
    iterations: int = 3
    epochs: int = 4
    short_fraction: float = 0.5
    lr: float = 0.01

    def __post_init__(self):
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsify: sparsity must be in [0, 1), got {self.sparsity}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"sparsify: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.iterations < 1 or self.epochs < 0 or not 0 < self.short_fraction <= 1:
            raise ValueError("sparsify: needs iterations >= 1, epochs >= 0 and 0 < short_fraction <= 1")


def prunable_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def magnitude_masks(weights, masks, sparsity):
    """Global masks with ``sparsity`` of all weights zeroed, never reviving already-pruned ones."""
    flat = torch.cat([(w.detach().abs() * m).flatten() for w, m in zip(weights, masks)])
    k = int(round(sparsity * flat.numel()))
    if k == 0:
        return masks
    threshold = flat.kthvalue(k).values
    new = [((w.detach().abs() > threshold) & m.bool()).float() for w, m in zip(weights, masks)]
    # ties at the threshold can leave a few extra weights: drop the smallest survivors to be exact
    extra = sum(int(n.sum()) for n in new) - (flat.numel() - k)
    if extra > 0:
        alive = torch.cat([(w.detach().abs() + (1 - n) * float("inf")).flatten() for w, n in zip(weights, new)])
        idx = alive.topk(extra, largest=False).indices
        cat = torch.cat([n.flatten() for n in new])
        cat[idx] = 0
        new = [c.view_as(n) for c, n in zip(cat.split([n.numel() for n in new]), new)]
    return new


def schedule_epochs(config):
    """Retraining epochs per round for the chosen schedule."""
    if config.schedule == "oneshot":
        return [0]
    short = math.ceil(config.short_fraction * config.epochs) if config.schedule == "aimp" else config.epochs
    return [short] * (config.iterations - 1) + [config.epochs]


def _default_train(data, lr, progress):
    def train(model, epochs):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        steps = max(1, epochs * len(data))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        model.train()
        for _ in tqdm(range(epochs), desc="sparsify: retrain", disable=not progress, leave=False):
            for x, y in data:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                sched.step()
        model.eval()
    return train


@register_pass(SparsifyConfig)
def sparsify(model, example_inputs, config=SparsifyConfig(), context=None):
    """A copy of ``model`` with ``config.sparsity`` of its conv/linear weights zeroed (see module doc)."""
    context = context or CompressContext()
    model = copy.deepcopy(model)
    train_fn = context.extras.get("train_fn")
    if train_fn is None and context.data is not None:
        train_fn = _default_train(list(context.data), config.lr, context.progress)
    epochs = schedule_epochs(config) if train_fn is not None else [0]
    weights = prunable_weights(model)
    masks = [torch.ones_like(w) for w in weights]
    hooks = [w.register_hook(lambda g, m=m: g * m) for w, m in zip(weights, masks)]
    rounds = len(epochs)
    try:
        for i, ep in enumerate(epochs):
            target = 1 - (1 - config.sparsity) ** ((i + 1) / rounds)
            new = magnitude_masks(weights, masks, target)
            for m, n in zip(masks, new):
                m.copy_(n)  # in place: the gradient hooks see the new masks
            with torch.no_grad():
                for w, m in zip(weights, masks):
                    w.mul_(m)
            if ep:
                train_fn(model, ep)
                with torch.no_grad():  # momentum/weight decay can move masked weights: re-zero
                    for w, m in zip(weights, masks):
                        w.mul_(m)
    finally:
        for h in hooks:
            h.remove()
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    context.extras["sparsify"] = {"sparsity": zeros / max(total, 1), "epochs_per_round": epochs,
                                  "retrained": train_fn is not None, "epochs_total": sum(epochs)}
    return model.eval()
