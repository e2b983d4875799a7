"""drop: remove whole residual blocks (PRACTISE, Wang et al. CVPR 2023), beside channel pruning.

A residual block ``y = x + f(x)`` can be replaced by the identity and the network still runs; fewer layers
means fewer kernel launches, so at the same MACs block dropping saves more latency than thinning every layer
(most of all at batch 1). Candidates are the submodules that map one tensor to a tensor of the same shape and
hold at least two conv/linear layers (blocks, not single layers, not plain ``nn.Sequential`` containers). Each
is scored by how much the model's outputs move when it alone is replaced by ``nn.Identity`` (KL divergence to
the unchanged model on the few-shot images, after re-estimating BatchNorm statistics), the cheap stand-in for
PRACTISE's recoverability; the least harmful non-overlapping blocks go first. A non-residual module scores
badly by construction, so it is never picked before a residual one. Follow with ``distill`` to recover.

Targets: ``blocks=2`` (drop two blocks) or ``macs=0.8`` (drop blocks while the kept MAC fraction stays >= 0.8
... i.e. stop at the first model at or below 0.8x). Example: ``drop(blocks=2),prune(macs=0.6,coupled=false),distill``.
"""
import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from slimkit.compress._hooks import run_hooked
from slimkit.compress.base import PassConfig, register_pass
from slimkit.compress.bnrecal import recalibrate, recovery_images
from slimkit.errors import SlimkitError

_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)


@dataclass
class DropConfig(PassConfig):
    """blocks: how many blocks to drop; macs: or drop until the kept MAC fraction is <= macs; recal: re-estimate
    BatchNorm statistics before scoring each candidate (closer to the recovered model's damage)."""

    name = "drop"
    lossless = False
    blocks: Optional[int] = None
    macs: Optional[float] = None
    recal: bool = True
    seed: int = 0

    def __post_init__(self):
        if (self.blocks is None) == (self.macs is None):
            raise ValueError("drop: give exactly one of blocks= (count) or macs= (kept MAC fraction)")
        if self.blocks is not None and self.blocks < 0:
            raise ValueError(f"drop: blocks must be >= 0, got {self.blocks}")
        if self.macs is not None and not 0 < self.macs <= 1:
            raise ValueError(f"drop: macs must be a kept fraction in (0, 1], got {self.macs}")


def candidate_blocks(model, x):
    """Names of shape-preserving submodules with >= 2 conv/linear layers, in execution order."""
    calls, handles = {}, []
    for name, mod in model.named_modules():
        if not name or isinstance(mod, (torch.nn.Sequential, torch.nn.ModuleList)):
            continue
        if sum(isinstance(m, _LAYERS) for m in mod.modules()) < 2:
            continue

        def hook(m, args, out, n=name):
            ok = len(args) == 1 and torch.is_tensor(args[0]) and torch.is_tensor(out) and out.shape == args[0].shape
            calls.setdefault(n, []).append(ok)
        handles.append(mod.register_forward_hook(hook))
    run_hooked(model, x, handles)
    return [n for n, c in calls.items() if c == [True]]


def replace(model, name, new):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _kl(out, ref):
    return float(F.kl_div(F.log_softmax(out, 1), F.log_softmax(ref, 1), reduction="batchmean", log_target=True))


@torch.no_grad()
def block_scores(model, names, X, recal=True, seed=0):
    """{name: KL(model || model without that block)} on ``X``."""
    ref = model.eval()(X)
    scores = {}
    for name in names:
        m = copy.deepcopy(model)
        replace(m, name, torch.nn.Identity())
        if recal:
            recalibrate(m, X, passes=2, seed=seed)
        scores[name] = _kl(m.eval()(X), ref)
    return scores


def _overlaps(a, b):
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


@register_pass(DropConfig)
def drop(model, example_inputs, config, context=None):
    """A copy of ``model`` with its least harmful residual blocks replaced by ``nn.Identity``."""
    from slimkit.model_io import Example
    from slimkit.profile.counting import count_macs

    X, _ = recovery_images(context, "drop")
    X = X[:256]
    example = Example.of(example_inputs)
    out = copy.deepcopy(model).eval()
    names = candidate_blocks(out, X[:2])
    if not names:
        raise SlimkitError("drop found no residual blocks (submodules mapping a tensor to one of the same shape "
                           "with >= 2 conv/linear layers)")
    scores = block_scores(out, names, X, config.recal, config.seed)
    macs0 = count_macs(out, tuple(example.tensors()))
    dropped = []
    for name in sorted(names, key=scores.get):
        if config.blocks is not None and len(dropped) >= config.blocks:
            break
        if config.macs is not None and count_macs(out, tuple(example.tensors())) <= config.macs * macs0:
            break
        if any(_overlaps(name, d) for d in dropped):
            continue
        replace(out, name, torch.nn.Identity())
        dropped.append(name)
    if context is not None:
        context.extras["drop"] = {"dropped": dropped, "scores": scores}
    out.dropped_blocks = dropped
    return out
