"""Lossless folding (DLA): BatchNorm into the preceding conv/linear, dropout modules out, linear->linear
with nothing between merged (only where the merged layer does not cost more MACs).

Works on the ``torch.export`` capture (``capture.py``) to find what feeds what, and edits a copy of the
user's own modules: a folded BatchNorm or a merged-away linear becomes ``nn.Identity``, so the model's
forward code runs unchanged. BN is folded only when the conv/linear output feeds nothing but that BN
(otherwise the un-normalised value is still needed) and both modules run once::

    W' = W * gamma / sqrt(var + eps)      b' = (b - mean) * gamma / sqrt(var + eps) + beta

Functional dropout (``F.dropout(x, p, self.training)``) is code, not a module: in eval mode it already
does nothing and stays.
"""
import copy
from dataclasses import dataclass

import torch
from torch import nn

from slimkit.compress.base import CompressContext, PassConfig, register_pass
from slimkit.compress.capture import capture
from slimkit.compress.graph import _op

_DROP_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_LAYER_OPS = ("conv1d", "conv2d", "conv3d", "linear")
_BN_OPS = ("batch_norm", "_native_batch_norm_legit_no_training")


@dataclass
class FoldConfig(PassConfig):
    """``bn``: fold BatchNorm; ``dropout``: drop dropout/identity; ``linear``: merge linear pairs."""

    name = "fold"
    lossless = True
    bn: bool = True
    dropout: bool = True
    linear: bool = True


@dataclass
class FoldStats:
    bn_folded: int = 0
    dropout_removed: int = 0
    identity_removed: int = 0
    linear_merged: int = 0


def fold_bn_into(layer, bn):
    """Fold eval-mode ``bn`` into ``layer`` (conv or linear) in place."""
    if not bn.track_running_stats or bn.running_var is None:
        raise ValueError(f"cannot fold {type(bn).__name__} without running statistics")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.affine:
            shift = shift + bn.bias.double()
        w = layer.weight.double()
        layer.weight.copy_((w * scale.view(-1, *([1] * (w.dim() - 1)))).to(layer.weight.dtype))
        b = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
        new_b = (b * scale + shift).to(layer.weight.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(new_b)
        else:
            layer.bias.copy_(new_b)


def set_module(model, name, module):
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _weight_module(cap, model, arg, types):
    """(module name, module) owning the parameter/buffer placeholder ``arg``, if of ``types``."""
    if not isinstance(arg, torch.fx.Node):
        return None, None
    fqn = cap.tensor_name(arg)
    if fqn is None:
        return None, None
    name = fqn.rpartition(".")[0]
    mod = model.get_submodule(name) if name else model
    return (name, mod) if isinstance(mod, types) else (None, None)


def _skip_eval_dropout(node):
    """The producer of ``node``'s input, looking through eval-mode dropout (a no-op) with one user."""
    prev = node.args[0]
    while isinstance(prev, torch.fx.Node) and prev.op == "call_function" and _op(prev) in ("dropout", "dropout_") \
            and len(prev.args) > 2 and prev.args[2] is False and len(prev.users) == 1:
        prev = prev.args[0]
    return prev


def fold_model(model, example_inputs, config=None, output=None):
    """Fold a copy of ``model``; returns ``(model copy, FoldStats)`` with exact counts of what went."""
    config = config or FoldConfig()
    new = copy.deepcopy(model).eval()
    stats = FoldStats()
    if config.dropout:
        for name, mod in list(new.named_modules()):
            if isinstance(mod, _DROP_MODULES):
                set_module(new, name, nn.Identity())
                stats.dropout_removed += 1
    if not (config.bn or config.linear):
        return new, stats
    with torch.no_grad():
        cap = capture(new, example_inputs, output)
    uses = {}
    for node in cap.graph.nodes:
        for a in node.all_input_nodes:
            uses[a.name] = uses.get(a.name, 0) + 1
    for node in list(cap.graph.nodes):
        if node.op != "call_function":
            continue
        op = _op(node)
        if config.bn and op in _BN_OPS:
            prev = node.args[0]
            if not isinstance(prev, torch.fx.Node) or prev.op != "call_function" or _op(prev) not in _LAYER_OPS \
                    or len(prev.users) != 1:
                continue
            lname, layer = _weight_module(cap, new, prev.args[1], (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            bname, bn = _weight_module(cap, new, node.args[3], nn.modules.batchnorm._BatchNorm)
            if layer is None or bn is None or uses.get(prev.args[1].name) != 1 or uses.get(node.args[3].name) != 1:
                continue
            if isinstance(layer, nn.Linear) and len(node.meta["val"].shape) != 2:
                continue  # BatchNorm1d on [N, C, L] normalises dim 1, not the linear's features
            fold_bn_into(layer, bn)
            set_module(new, bname, nn.Identity())
            stats.bn_folded += 1
        elif config.linear and op == "linear":
            prev = _skip_eval_dropout(node)
            if not isinstance(prev, torch.fx.Node) or prev.op != "call_function" or _op(prev) != "linear" \
                    or len(prev.users) != 1:
                continue
            fname, first = _weight_module(cap, new, prev.args[1], nn.Linear)
            sname, second = _weight_module(cap, new, node.args[1], nn.Linear)
            if first is None or second is None or uses.get(prev.args[1].name) != 1 \
                    or uses.get(node.args[1].name) != 1:
                continue
            h, n, m = first.out_features, first.in_features, second.out_features
            if m * n > h * (m + n):
                continue  # a bottleneck (e.g. from lowrank): merging would cost more MACs
            with torch.no_grad():
                w = second.weight.double() @ first.weight.double()
                b = second.bias.double() if second.bias is not None else torch.zeros(m, dtype=torch.float64)
                if first.bias is not None:
                    b = b + second.weight.double() @ first.bias.double()
                merged = nn.Linear(n, m).to(first.weight.dtype)
                merged.weight.copy_(w)
                merged.bias.copy_(b)
            set_module(new, sname, merged)
            set_module(new, fname, nn.Identity())
            stats.linear_merged += 1
    return new.eval(), stats


@register_pass(FoldConfig)
def fold(model, example_inputs, config=FoldConfig(), context=None):
    """Lossless fold pass: a folded eval-mode copy of ``model``; counts go to ``context.extras['fold']``."""
    gm, stats = fold_model(model, example_inputs, config, getattr(context, "output", None))
    if context is not None:
        context.extras["fold"] = stats
    return gm
