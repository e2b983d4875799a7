"""Physical channel removal: a per-module-type surgery table and ``apply_removal`` over a ChannelGraph.

A surgery function ``fn(module, in_keep, out_keep)`` slices a module in place to the kept input and
output channel indices (LongTensors, or None for "unchanged"). Add support for a new layer type with::

    @register_surgery(MyLayer)
    def _(module, in_keep, out_keep): ...
"""
import copy

import torch
from torch import nn

from slimkit.compress.graph import is_depthwise

_SURGERY = {}


def register_surgery(module_type):
    """Register ``fn(module, in_keep, out_keep)`` for ``module_type``; a duplicate raises."""
    def wrap(fn):
        if module_type in _SURGERY:
            raise ValueError(f"surgery for {module_type.__name__} is already registered")
        _SURGERY[module_type] = fn
        return fn
    return wrap


def get_surgery(module):
    for cls in type(module).__mro__:
        if cls in _SURGERY:
            return _SURGERY[cls]
    raise KeyError(f"no channel surgery registered for {type(module).__name__}; "
                   "add one with slimkit.compress.surgery.register_surgery")


def _param(t, keep, dim):
    return nn.Parameter(t.data.index_select(dim, keep).clone(), requires_grad=t.requires_grad)


def _conv(m, in_keep, out_keep):
    if is_depthwise(m):  # one filter per channel: input and output keep the same channels
        keep = in_keep if in_keep is not None else out_keep
        m.weight = _param(m.weight, keep, 0)
        if m.bias is not None:
            m.bias = _param(m.bias, keep, 0)
        m.in_channels = m.out_channels = m.groups = len(keep)
        return
    if out_keep is not None:
        m.weight = _param(m.weight, out_keep, 0)
        if m.bias is not None:
            m.bias = _param(m.bias, out_keep, 0)
        m.out_channels = len(out_keep)
    if in_keep is not None:
        m.weight = _param(m.weight, in_keep, 1)
        m.in_channels = len(in_keep)


register_surgery(nn.Conv1d)(_conv)
register_surgery(nn.Conv2d)(_conv)


@register_surgery(nn.Linear)
def _linear(m, in_keep, out_keep):
    if out_keep is not None:
        m.weight = _param(m.weight, out_keep, 0)
        if m.bias is not None:
            m.bias = _param(m.bias, out_keep, 0)
        m.out_features = len(out_keep)
    if in_keep is not None:
        m.weight = _param(m.weight, in_keep, 1)
        m.in_features = len(in_keep)


@register_surgery(nn.modules.batchnorm._BatchNorm)
def _batchnorm(m, in_keep, out_keep):
    keep = in_keep if in_keep is not None else out_keep
    if m.affine:
        m.weight = _param(m.weight, keep, 0)
        m.bias = _param(m.bias, keep, 0)
    if m.track_running_stats:
        m.running_mean = m.running_mean.index_select(0, keep).clone()
        m.running_var = m.running_var.index_select(0, keep).clone()
    m.num_features = len(keep)


def _keep_idx(elems, removed_elem, repeat=1):
    keep = [i for i, e in enumerate(elems) if not removed_elem(e)]
    if repeat == 1:
        return torch.tensor(keep, dtype=torch.long)
    return torch.tensor([i * repeat + r for i in keep for r in range(repeat)], dtype=torch.long)


def apply_removal(graph, removed_groups, fold=None):
    """A pruned copy of ``graph.gm`` without the channels of ``removed_groups`` (group ids).

    ``fold``: optional ``{consumer node name: weight-compensation fn(module, in_keep)}`` applied before
    slicing (used by linear-redundancy pruning to move a removed unit's contribution to kept ones).
    """
    removed_groups = set(removed_groups)
    gm = copy.deepcopy(graph.gm)
    mods = dict(gm.named_modules())
    nodes = {n.name: n for n in gm.graph.nodes}

    def removed(e):
        return graph.group_of(e) in removed_groups  # zero (pad) channels follow the group they are added to

    for name, src_in in list(graph.consumers.items()) + [(n, None) for n in graph.sources if n not in graph.consumers]:
        node = nodes[name]
        mod = mods[node.target]
        out_keep = _keep_idx(graph.sources[name], removed) if name in graph.sources else None
        in_keep = None
        if src_in is not None:
            tin = graph.tensors[src_in]
            in_keep = _keep_idx(tin.elems, removed, tin.repeat)
            if fold and name in fold:
                fold[name](mod, in_keep)
        if out_keep is not None and len(out_keep) == 0:
            raise ValueError(f"pruning would remove every output channel of {node.target!r}")
        get_surgery(mod)(mod, in_keep, out_keep)
    for name, src_in in graph.param_pass.items():
        mod = mods[nodes[name].target]
        get_surgery(mod)(mod, _keep_idx(graph.tensors[src_in].elems, removed), None)
    for name, (left, right, cpos) in graph.pads.items():
        node = nodes[name]
        pad = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
        pad[cpos] = sum(1 for e in left if not removed(e))
        pad[cpos + 1] = sum(1 for e in right if not removed(e))
        if len(node.args) > 1:
            node.args = (node.args[0], tuple(pad)) + tuple(node.args[2:])
        else:
            node.kwargs = {**node.kwargs, "pad": tuple(pad)}
    gm.recompile()
    return gm
