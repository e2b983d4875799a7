"""Lossless folding (DLA): BatchNorm into the preceding conv/linear, drop dropout/identity, merge
linear->linear with nothing between (only where the merged layer does not cost more MACs).

Works on a torch.fx trace, so functional code (``F.dropout``, ``torch.flatten`` ...) is handled;
the result is a ``torch.fx.GraphModule`` in eval mode. BN is folded only when the conv/linear output
feeds nothing but that BN (otherwise the un-normalised value is still needed)::

    W' = W * gamma / sqrt(var + eps)      b' = (b - mean) * gamma / sqrt(var + eps) + beta
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.compress.base import CompressContext, PassConfig, register_pass
from slimkit.compress.graph import trace

_DROP_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_DROP_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}


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


def _module_of(gm, node, types):
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, types):
            return mod
    return None


def _replace(gm, node, by):
    node.replace_all_uses_with(by)
    gm.graph.erase_node(node)


def fold_model(model, example_inputs, config=None):
    """Fold a copy of ``model``; returns ``(GraphModule, FoldStats)`` with exact counts of what went."""
    config = config or FoldConfig()
    gm = trace(copy.deepcopy(model).eval(), example_inputs)
    stats = FoldStats()
    for node in list(gm.graph.nodes):
        if config.dropout and node.op == "call_module" and isinstance(gm.get_submodule(node.target), _DROP_MODULES):
            is_id = isinstance(gm.get_submodule(node.target), nn.Identity)
            _replace(gm, node, node.args[0])
            stats.identity_removed += is_id
            stats.dropout_removed += not is_id
        elif config.dropout and node.op == "call_function" and node.target in _DROP_FUNCTIONS:
            _replace(gm, node, node.args[0])
            stats.dropout_removed += 1
        elif config.bn and _module_of(gm, node, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) is not None:
            prev = node.args[0]
            layer = _module_of(gm, prev, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            if layer is None or len(prev.users) != 1:
                continue
            if isinstance(layer, nn.Linear) and len(node.meta["tensor_meta"].shape) != 2:
                continue  # BatchNorm1d on [N, C, L] normalises dim 1, not the linear's features
            fold_bn_into(layer, gm.get_submodule(node.target))
            _replace(gm, node, prev)
            stats.bn_folded += 1
        elif config.linear and _module_of(gm, node, nn.Linear) is not None:
            prev = node.args[0]
            first = _module_of(gm, prev, nn.Linear)
            second = gm.get_submodule(node.target)
            if first is None or len(prev.users) != 1:
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
            gm.add_submodule(node.target, merged)
            node.args = (prev.args[0],) + tuple(node.args[1:])
            gm.graph.erase_node(prev)
            stats.linear_merged += 1
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), stats


@register_pass(FoldConfig)
def fold(model, example_inputs, config=FoldConfig(), context=None):
    """Lossless fold pass: a new eval-mode GraphModule; counts go to ``context.extras['fold']``."""
    gm, stats = fold_model(model, example_inputs, config)
    if context is not None:
        context.extras["fold"] = stats
    return gm
